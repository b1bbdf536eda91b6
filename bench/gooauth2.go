package bench

import (
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/go-oauth2/oauth2/v4"
	"github.com/go-oauth2/oauth2/v4/generates"
	"github.com/go-oauth2/oauth2/v4/manage"
	"github.com/go-oauth2/oauth2/v4/models"
	"github.com/go-oauth2/oauth2/v4/server"
	"github.com/go-oauth2/oauth2/v4/store"
	"github.com/golang-jwt/jwt/v5"
	"github.com/tidwall/buntdb"

	"github.com/m2mauth/m2mauth"
)

// NewGoOAuth2Endpoint is go-oauth2/oauth2 v4's token endpoint with its
// in-memory client store (plaintext secrets, its default) and its
// in-memory token store (buntdb), which keeps every token; only the client
// credentials grant is allowed, tokens last 1h and a scope handler refuses
// scopes the client is not granted. The access token is go-oauth2's
// default opaque one, or, with jwtTokens, an HS256 JWT from its
// JWTAccessGenerate.
func NewGoOAuth2Endpoint(jwtTokens bool) (Endpoint, error) {
	secret, err := m2mauth.GenerateSecret()
	if err != nil {
		return Endpoint{}, err
	}
	m := manage.NewDefaultManager()
	m.SetClientTokenCfg(&manage.Config{AccessTokenExp: time.Hour})
	name := EndpointGoOAuth2
	if jwtTokens {
		name = EndpointGoOAuth2JWT
		m.MapAccessGenerate(generates.NewJWTAccessGenerate(KeyID, Key(), jwt.SigningMethodHS256))
	}
	tokens, err := store.NewMemoryTokenStore()
	if err != nil {
		return Endpoint{}, err
	}
	m.MapTokenStorage(tokens)
	clients := store.NewClientStore()
	if err := clients.Set(ClientID, &models.Client{ID: ClientID, Secret: secret}); err != nil {
		return Endpoint{}, err
	}
	m.MapClientStorage(clients)

	cfg := server.NewConfig()
	cfg.AllowedGrantTypes = []oauth2.GrantType{oauth2.ClientCredentials}
	srv := server.NewServer(cfg, m)
	granted := []string{"read", "write"}
	srv.SetClientScopeHandler(func(tgr *oauth2.TokenGenerateRequest) (bool, error) {
		for s := range strings.FieldsSeq(tgr.Scope) {
			if !slices.Contains(granted, s) {
				return false, nil
			}
		}
		return true, nil
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.HandleTokenRequest(w, r)
	})
	return Endpoint{
		Name: name, Handler: h, Authorization: basicAuth(ClientID, secret),
		release: func() { closeTokenStore(tokens) },
	}, nil
}

// closeTokenStore closes the buntdb database behind go-oauth2's in-memory
// token store. The store has no Close method, and buntdb's background
// goroutine keeps an unclosed database, with every token in it, alive for
// the life of the process; without this, each benchmark run would leave
// its tokens on the heap of the runs after it. go-oauth2 keeps the
// database in an unexported field, so it is reached by reflection; if
// that field changes, nothing is closed.
func closeTokenStore(ts oauth2.TokenStore) {
	v := reflect.ValueOf(ts)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return
	}
	f := v.Elem().FieldByName("db")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*buntdb.DB]() {
		return
	}
	if db := *(**buntdb.DB)(unsafe.Pointer(f.UnsafeAddr())); db != nil {
		db.Close()
	}
}
