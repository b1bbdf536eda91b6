package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/m2mauth/m2mauth"
)

// clientCommand runs "client <create|rotate-secret|disable|enable|delete|list>".
func clientCommand(g globals, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	fs := flag.NewFlagSet("client "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "", "client id")
	var (
		audience, scopes *string
		ttl, grace       *time.Duration
	)
	switch args[0] {
	case "create":
		audience = fs.String("audience", g.audience, "audience the client may get tokens for")
		scopes = fs.String("scopes", "", `space-delimited scopes granted for the audience, e.g. "read:builders read:subcontractors"`)
		ttl = fs.Duration("ttl", 0, "token lifetime for this client, at most 24h (default: the server's, 1h)")
	case "rotate-secret":
		grace = fs.Duration("grace", 24*time.Hour, "how long the current secrets keep working")
	case "disable", "enable", "delete", "list":
	default:
		fmt.Fprintf(stderr, "unknown client command %q\n", args[0])
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err)
	}
	if fs.NArg() > 0 || (args[0] != "list" && *id == "") {
		if *id == "" && args[0] != "list" {
			fmt.Fprintln(stderr, "-id is required")
		}
		fs.Usage()
		return errUsage
	}
	switch {
	case ttl != nil && *ttl < 0:
		return errors.New("-ttl must not be negative")
	case ttl != nil && *ttl > m2mauth.MaxClientTokenTTL:
		return fmt.Errorf("-ttl %v is longer than the %v a token may live; a leaked token stays valid until it expires, so keep it short (1h or less) and let the client fetch a new one", *ttl, m2mauth.MaxClientTokenTTL)
	case grace != nil && *grace < 0:
		return errors.New("-grace must not be negative")
	}

	ctx := context.Background()
	b, err := openBackend(ctx, g.db, backendOptions{pool: defaultPool()})
	if err != nil {
		return err
	}
	defer b.close()
	store := b.store
	enc := json.NewEncoder(stdout)

	switch args[0] {
	case "create":
		granted, err := m2mauth.ParseScopes(*scopes)
		if err != nil {
			return fmt.Errorf("-scopes: %w", err)
		}
		plain, s, err := m2mauth.NewSecret(time.Now(), time.Time{})
		if err != nil {
			return err
		}
		c := &m2mauth.Client{ID: *id, Secrets: []m2mauth.Secret{s}, Grants: map[string]m2mauth.Scopes{*audience: granted}, TokenTTL: *ttl}
		if err := store.CreateClient(ctx, c); err != nil {
			return err
		}
		return enc.Encode(map[string]string{"client_id": *id, "client_secret": plain})
	case "rotate-secret":
		c, err := store.Client(ctx, *id)
		if err != nil {
			return err
		}
		now := time.Now()
		until := now.Add(*grace)
		plain, s, err := m2mauth.NewSecret(now, time.Time{})
		if err != nil {
			return err
		}
		if err := store.AddSecret(ctx, *id, s); err != nil {
			return err
		}
		for _, old := range c.Secrets {
			if old.ActiveAt(until) { // ends at the grace period, or sooner
				if err := store.ExpireSecret(ctx, *id, old.ID, until); err != nil {
					return err
				}
			}
		}
		return enc.Encode(map[string]string{
			"client_id": *id, "client_secret": plain, "secret_id": s.ID,
			"previous_secrets_expire_at": until.UTC().Format(time.RFC3339),
		})
	case "disable", "enable":
		return store.SetDisabled(ctx, *id, args[0] == "disable")
	case "delete":
		return store.DeleteClient(ctx, *id)
	}
	return listClients(ctx, store, enc)
}

// clientView is what "client list" shows of a client: never a secret or
// a hash.
type clientView struct {
	ID       string            `json:"client_id"`
	Disabled bool              `json:"disabled"`
	Public   bool              `json:"public,omitempty"`
	Grants   map[string]string `json:"grants"`
	TokenTTL string            `json:"token_ttl,omitempty"`
	Secrets  []secretView      `json:"secrets"`
	Created  time.Time         `json:"created_at"`
}

type secretView struct {
	ID        string     `json:"id"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
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
			v := clientView{ID: c.ID, Disabled: c.Disabled, Public: c.Public, Grants: map[string]string{}, Created: c.CreatedAt}
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
			if err := enc.Encode(v); err != nil {
				return err
			}
		}
		after = page[len(page)-1].ID
	}
}
