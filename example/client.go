package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// maxUpdateTries bounds how often "client update" reads the client again
// because it changed before the update was written.
const maxUpdateTries = 5

// clientSynopsis is the usage line of each client command, after
// "example [global flags] client".
var clientSynopsis = map[string]string{
	"create":        `create -id ID -scopes "a b" [-audience AUD] [-ttl 1h] [-introspect]`,
	"update":        `update -id ID [-scopes "a b"] [-audience AUD] [-ttl 1h] [-introspect=true|false]`,
	"show":          `show -id ID`,
	"list":          `list [-id ID]`,
	"rotate-secret": `rotate-secret -id ID [-grace 24h] [-revoke-tokens]`,
	"remove-secret": `remove-secret -id ID -secret-id S`,
	"revoke-tokens": `revoke-tokens -id ID`,
	"disable":       `disable -id ID`,
	"enable":        `enable -id ID`,
	"delete":        `delete -id ID`,
	"usage":         `usage -id ID [-since 24h]`,
}

// clientHelp explains the commands whose synopsis does not say enough,
// in their own help.
var clientHelp = map[string]string{
	"revoke-tokens": "Revokes every token issued to the client until now; tokens it gets afterwards work.\n" +
		"Running servers refuse the revoked tokens within their -revocation-refresh (5s by default).\n",
	"disable": "Refuses the client's token requests and revokes every token issued to it until now\n" +
		"(running servers refuse them within their -revocation-refresh). \"enable\" lets it get new\n" +
		"tokens; the revoked ones stay refused.\n",
	"delete": "Deletes the client and revokes every token issued to it (running servers refuse them\n" +
		"within their -revocation-refresh); tokens issued before the deletion stay refused if the\n" +
		"id is registered again.\n",
}

// clientCommand runs "client <command>": see clientSynopsis. mainUsage
// prints the usage of the whole command.
func clientCommand(g globals, args []string, stdout, stderr io.Writer, mainUsage func()) error {
	if len(args) == 0 {
		mainUsage()
		return errUsage
	}
	cmd := args[0]
	if cmd == "-h" || cmd == "-help" || cmd == "--help" {
		mainUsage()
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("client "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: example [global flags] client %s\n", clientSynopsis[cmd])
		fmt.Fprint(stderr, clientHelp[cmd])
		fs.PrintDefaults()
	}
	var (
		id, audience, scopes, secretID string
		ttl, grace, since              time.Duration
		introspect, revokeTokens       bool
	)
	const introspectHelp = "the client may introspect any token (RFC 7662); without it, only tokens issued for its own client id as audience"
	const scopesHelp = `the scopes the client may request for the audience, space-separated in one argument, e.g. "read:builders read:subcontractors"`
	const ttlHelp = "lifetime of this client's tokens, at most 24h; 0: the server's (1h)"
	switch cmd {
	case "list":
		fs.StringVar(&id, "id", "", "show only the client with this id")
	case "create":
		fs.StringVar(&id, "id", "", "client id")
		fs.StringVar(&audience, "audience", g.audience, "the audience (API) the client may get tokens for")
		fs.StringVar(&scopes, "scopes", "", scopesHelp+" (required)")
		fs.DurationVar(&ttl, "ttl", 0, ttlHelp)
		fs.BoolVar(&introspect, "introspect", false, introspectHelp)
	case "update":
		fs.StringVar(&id, "id", "", "client id")
		fs.StringVar(&audience, "audience", "", "the audience whose scopes -scopes replaces; one the client has no grant for is added (default: the client's only audience, or the global -audience if it has none)")
		fs.StringVar(&scopes, "scopes", "", scopesHelp+"; they replace the audience's scopes")
		fs.DurationVar(&ttl, "ttl", 0, ttlHelp)
		fs.BoolVar(&introspect, "introspect", false, introspectHelp+"; -introspect=false takes it away (default: left as it is)")
	case "rotate-secret":
		fs.StringVar(&id, "id", "", "client id")
		fs.DurationVar(&grace, "grace", 24*time.Hour, "how long the current secrets keep working; for a leaked secret give 0s")
		fs.BoolVar(&revokeTokens, "revoke-tokens", false, "also revoke every token issued to the client until now, as \"client revoke-tokens\" does")
	case "remove-secret":
		fs.StringVar(&id, "id", "", "client id")
		fs.StringVar(&secretID, "secret-id", "", `the secret's id, as "client show" lists it`)
	case "show", "disable", "enable", "delete", "revoke-tokens":
		fs.StringVar(&id, "id", "", "client id")
	case "usage":
		fs.StringVar(&id, "id", "", "client id")
		fs.DurationVar(&since, "since", 24*time.Hour, "count the requests of this last span")
	default:
		fmt.Fprintf(stderr, "unknown client command %q\n", cmd)
		mainUsage()
		return errUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// missing explains a missing flag or a stray argument, then the usage.
	missing := func(msg string) error {
		fmt.Fprintln(stderr, msg)
		fs.Usage()
		return errUsage
	}
	switch {
	case fs.NArg() > 0 && set["scopes"]:
		// -scopes read write: the flag took "read", "write" was left.
		words := []string{scopes}
		for _, a := range fs.Args() {
			if strings.HasPrefix(a, "-") {
				break
			}
			words = append(words, a)
		}
		return missing(fmt.Sprintf("unexpected argument %q: scopes are space-separated in one argument, so quote them: -scopes %s", fs.Arg(0), scopesArg(strings.Join(words, " "))))
	case fs.NArg() > 0:
		return missing(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	case cmd != "list" && id == "":
		return missing("-id is required")
	case cmd == "create" && !set["scopes"]:
		return missing(`-scopes is required: the scopes the client may request, space-separated in one argument, e.g. -scopes "read:builders read:subcontractors"`)
	case cmd == "remove-secret" && secretID == "":
		return missing(`-secret-id is required: "client show -id ID" lists the client's secret ids`)
	case cmd == "update" && set["audience"] && !set["scopes"]:
		return missing("-audience names the audience whose scopes -scopes replaces: give -scopes too")
	case cmd == "update" && !set["scopes"] && !set["ttl"] && !set["introspect"]:
		return missing("nothing to update: give -scopes, -ttl or -introspect")
	}
	var granted m2mauth.Scopes
	if set["scopes"] {
		var err error
		if granted, err = parseScopesFlag(scopes); err != nil {
			return err
		}
	}
	switch {
	case ttl < 0:
		return errors.New("-ttl must not be negative")
	case ttl > m2mauth.MaxClientTokenTTL:
		return fmt.Errorf("-ttl %v is longer than the %v a token may live; a leaked token stays valid until it expires, so keep it short (1h or less) and let the client fetch a new one", ttl, m2mauth.MaxClientTokenTTL)
	case grace < 0:
		return errors.New("-grace must not be negative")
	case since < 0:
		return errors.New("-since must not be negative")
	}

	// Bad values are refused before the database is opened (or made).
	if cmd != "list" && !m2mauth.ValidClientID(id) {
		return errors.New("-id: a client id is 1 to 255 printable ASCII characters")
	}
	if cmd == "create" || set["audience"] {
		// An audience is a URI or a name (RFC 7519 §4.1.3): no control
		// characters, such as a newline pasted along with it.
		switch {
		case audience == "":
			return errors.New("-audience is empty")
		case strings.ContainsFunc(audience, unicode.IsControl):
			return fmt.Errorf("-audience %q holds a control character", audience)
		}
	}
	d, err := parseDB(g.db)
	if err != nil {
		return err
	}
	ctx := context.Background()
	b, err := openBackend(ctx, d, backendOptions{pool: defaultPool(), auditLog: slog.New(slog.NewJSONHandler(stderr, nil)), existing: cmd != "create"})
	if err != nil {
		return err
	}
	defer b.close()
	store := b.store
	enc := json.NewEncoder(stdout)
	// named adds the client id to the store's errors.
	named := func(err error) error {
		if err != nil {
			return fmt.Errorf("client %q: %w", id, err)
		}
		return nil
	}

	switch cmd {
	case "usage":
		if b.sql == nil {
			return errors.New(`"client usage" reads the audit table of a SQL database; -db memory has none`)
		}
		now := time.Now()
		u, err := b.sql.Usage(ctx, id, now.Add(-since), time.Time{})
		if err != nil {
			return named(err)
		}
		return enc.Encode(usageJSON(u, since))
	case "create":
		plain, s, err := m2mauth.NewSecret(time.Now(), time.Time{})
		if err != nil {
			return err
		}
		c := &m2mauth.Client{
			ID: id, Secrets: []m2mauth.Secret{s}, Grants: map[string]m2mauth.Scopes{audience: granted},
			TokenTTL: ttl, CanIntrospect: introspect,
		}
		if err := store.CreateClient(ctx, c); err != nil {
			return named(err)
		}
		return enc.Encode(map[string]string{"client_id": id, "client_secret": plain})
	case "update":
		// The client as read, changed and written back; if another
		// change came in between (a "client disable", say), it is read
		// again rather than undone.
		for try := 1; ; try++ {
			c, err := store.Client(ctx, id)
			if err != nil {
				return named(err)
			}
			if set["scopes"] {
				aud, err := updatedAudience(c, audience, g.audience)
				if err != nil {
					return err
				}
				if c.Grants == nil {
					c.Grants = map[string]m2mauth.Scopes{}
				}
				c.Grants[aud] = granted
			}
			if set["ttl"] {
				c.TokenTTL = ttl
			}
			if set["introspect"] {
				c.CanIntrospect = introspect
			}
			err = store.UpdateClient(ctx, c)
			if err == nil {
				break
			}
			if !errors.Is(err, m2mauth.ErrClientChanged) || try == maxUpdateTries {
				return named(err)
			}
		}
		return showClient(ctx, store, id, enc)
	case "show":
		return showClient(ctx, store, id, enc)
	case "rotate-secret":
		rotator, ok := store.(m2mauth.SecretRotator)
		if !ok {
			return fmt.Errorf("the %s store cannot rotate a secret in one step", b.kind)
		}
		now := time.Now()
		until := now.Add(grace)
		plain, s, err := m2mauth.NewSecret(now, time.Time{})
		if err != nil {
			return err
		}
		// One change: the new secret, and the old ones ending at the
		// grace period (or sooner, as they were), or nothing at all.
		if err := rotator.RotateSecret(ctx, id, s, until); err != nil {
			return named(err)
		}
		out := map[string]string{
			"client_id": id, "client_secret": plain, "secret_id": s.ID,
			"previous_secrets_expire_at": until.UTC().Format(time.RFC3339Nano),
		}
		if revokeTokens {
			// After the old secrets' expiry is set: with -grace 0s,
			// no token issued from then on comes from an old secret.
			at, err := revokeClientTokens(ctx, b, id)
			if err != nil {
				// The secret is rotated: its new value must not be
				// lost with the error.
				if eerr := enc.Encode(out); eerr != nil {
					return eerr
				}
				return fmt.Errorf("client %q: the secret was rotated (above), but its tokens were not revoked; run \"client revoke-tokens -id %s\": %w", id, id, err)
			}
			out["tokens_revoked_at"] = at.Format(time.RFC3339Nano)
		}
		return enc.Encode(out)
	case "revoke-tokens":
		at, err := revokeClientTokens(ctx, b, id)
		if err != nil {
			return named(err)
		}
		return enc.Encode(map[string]string{"client_id": id, "tokens_revoked_at": at.Format(time.RFC3339Nano)})
	case "remove-secret":
		err := store.RemoveSecret(ctx, id, secretID)
		if errors.Is(err, m2mauth.ErrSecretNotFound) {
			return fmt.Errorf("client %q has no secret %q; \"client show -id ID\" lists its secret ids", id, secretID)
		}
		if err != nil {
			return named(err)
		}
		c, err := store.Client(ctx, id)
		if err != nil {
			return named(err)
		}
		now := time.Now()
		for _, s := range c.Secrets {
			if s.ActiveAt(now) {
				return nil
			}
		}
		fmt.Fprintf(stderr, "warning: client %q has no working secret left: it cannot get tokens until \"client rotate-secret\" gives it one\n", id)
		return nil
	case "disable", "enable":
		return named(store.SetDisabled(ctx, id, cmd == "disable"))
	case "delete":
		return named(store.DeleteClient(ctx, id))
	}
	if id != "" {
		err := showClient(ctx, store, id, enc)
		if errors.Is(err, m2mauth.ErrClientNotFound) {
			return nil // a filter that matches nothing
		}
		return err
	}
	return listClients(ctx, store, enc)
}

// revokeClientTokens revokes every token issued to the client id until
// now and returns the watermark the store set, in UTC.
func revokeClientTokens(ctx context.Context, b *backend, id string) (time.Time, error) {
	if err := b.revoker.RevokeClientTokens(ctx, id); err != nil {
		return time.Time{}, err
	}
	c, err := b.store.Client(ctx, id)
	if err != nil {
		return time.Time{}, err
	}
	return c.TokensRevokedAt.UTC(), nil
}

// parseScopesFlag reads -scopes: scope tokens separated by spaces.
func parseScopesFlag(s string) (m2mauth.Scopes, error) {
	if strings.Contains(s, ",") {
		fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
		return nil, fmt.Errorf("-scopes %s: scopes are space-separated: -scopes %s", scopesArg(s), scopesArg(strings.Join(fields, " ")))
	}
	fields := strings.Fields(s)
	for _, f := range fields {
		if _, err := m2mauth.NewScopes(f); err != nil {
			return nil, fmt.Errorf(`-scopes: %q is not a scope: a scope is printable ASCII but for space, " and \ (RFC 6749 section 3.3)`, f)
		}
	}
	return m2mauth.NewScopes(fields...)
}

// scopesArg writes s as the argument of -scopes for a shell: in double
// quotes, as the usage text does, unless the shell would expand
// something in them.
func scopesArg(s string) string {
	if strings.ContainsAny(s, "\"\\$`!'") {
		return shellQuote(s)
	}
	return `"` + s + `"`
}

// updatedAudience is the audience whose scopes "client update" replaces:
// the -audience flag, else the client's only audience, else the global
// -audience for a client without grants.
func updatedAudience(c *m2mauth.Client, flagValue, global string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	switch len(c.Grants) {
	case 0:
		return global, nil
	case 1:
		for aud := range c.Grants {
			return aud, nil
		}
	}
	auds := make([]string, 0, len(c.Grants))
	for aud := range c.Grants {
		auds = append(auds, aud)
	}
	sort.Strings(auds)
	return "", fmt.Errorf("client %q has grants for %d audiences (%s): say which one -scopes is for with -audience", c.ID, len(auds), strings.Join(auds, ", "))
}

// clientView is what "client show" and "client list" show of a client:
// never a secret or a hash.
type clientView struct {
	ID            string            `json:"client_id"`
	Disabled      bool              `json:"disabled"`
	Public        bool              `json:"public,omitempty"`
	Grants        map[string]string `json:"grants"`
	TokenTTL      string            `json:"token_ttl,omitempty"`
	CanIntrospect bool              `json:"can_introspect"`
	// TokensRevokedAt is the client's watermark: its tokens issued
	// until then are revoked. Absent when none was ever set.
	TokensRevokedAt *time.Time   `json:"tokens_revoked_at,omitempty"`
	Secrets         []secretView `json:"secrets"`
	Created         time.Time    `json:"created_at"`
}

type secretView struct {
	ID        string     `json:"id"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func viewOf(c *m2mauth.Client) clientView {
	v := clientView{ID: c.ID, Disabled: c.Disabled, Public: c.Public, Grants: map[string]string{}, CanIntrospect: c.CanIntrospect, Created: c.CreatedAt}
	if !c.TokensRevokedAt.IsZero() {
		at := c.TokensRevokedAt.UTC()
		v.TokensRevokedAt = &at
	}
	for aud, s := range c.Grants {
		v.Grants[aud] = s.String()
	}
	if c.TokenTTL > 0 {
		v.TokenTTL = c.TokenTTL.String()
	}
	for _, s := range c.Secrets {
		sv := secretView{ID: s.ID, CreatedAt: s.CreatedAt}
		if !s.ExpiresAt.IsZero() {
			e := s.ExpiresAt
			sv.ExpiresAt = &e
		}
		v.Secrets = append(v.Secrets, sv)
	}
	sort.Slice(v.Secrets, func(i, j int) bool { return v.Secrets[i].CreatedAt.Before(v.Secrets[j].CreatedAt) })
	return v
}

// showClient writes the view of one client. An unknown id is an error
// wrapping m2mauth.ErrClientNotFound.
func showClient(ctx context.Context, store m2mauth.ClientManager, id string, enc *json.Encoder) error {
	c, err := store.Client(ctx, id)
	if err != nil {
		return fmt.Errorf("client %q: %w", id, err)
	}
	return enc.Encode(viewOf(c))
}

func listClients(ctx context.Context, store m2mauth.ClientManager, enc *json.Encoder) error {
	after := ""
	for {
		page, err := store.ListClients(ctx, after, 100)
		if err != nil {
			return err
		}
		if len(page) == 0 {
			return nil
		}
		for _, c := range page {
			if err := enc.Encode(viewOf(c)); err != nil {
				return err
			}
		}
		after = page[len(page)-1].ID
	}
}

// clientUsage is a sqlstore.ClientUsage as "client usage" prints it.
type clientUsage struct {
	ClientID          string           `json:"client_id"`
	Since             string           `json:"since"` // e.g. "24h0m0s": the span counted, up to now
	TokensIssued      int64            `json:"tokens_issued"`
	Failures          map[string]int64 `json:"failures,omitempty"` // by reason
	Rejected          int64            `json:"rejected"`
	RateLimited       int64            `json:"rate_limited"`
	DistinctAddresses int64            `json:"distinct_addresses"`
	FirstSeen         *time.Time       `json:"first_seen,omitempty"`
	LastSeen          *time.Time       `json:"last_seen,omitempty"`
}

func usageJSON(u sqlstore.ClientUsage, since time.Duration) clientUsage {
	out := clientUsage{
		ClientID: u.ClientID, Since: since.String(), TokensIssued: u.TokensIssued, Failures: u.Failures,
		Rejected: u.Rejected, RateLimited: u.RateLimited, DistinctAddresses: u.DistinctAddresses,
	}
	if !u.FirstSeen.IsZero() {
		out.FirstSeen, out.LastSeen = &u.FirstSeen, &u.LastSeen
	}
	return out
}
