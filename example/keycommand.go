package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/m2mauth/m2mauth"
)

// keySynopsis is the usage line of each key command, after
// "example [global flags] key".
var keySynopsis = map[string]string{
	"list":       "list",
	"rotate":     "rotate",
	"revoke":     "revoke -kid KID",
	"rotate-kek": "rotate-kek",
}

// keyHelp explains each key command in its own help.
var keyHelp = map[string]string{
	"list": "Prints every managed signing key, one JSON line each: kid, alg, generation, state\n" +
		"(published, active, retired, revoked) and the times of its life. Never key material.\n",
	"rotate": "Publishes a new signing key now. Running servers put it in their JWKS within their\n" +
		"-key-refresh; it signs from -key-propagation-delay after now, once every verifier has\n" +
		"had time to fetch it. Give the same -jwks-max-age and -key-propagation-delay as serve.\n",
	"revoke": "Revokes a signing key at once, for a key that leaked: running servers stop signing with\n" +
		"it, leave it out of the JWKS and refuse the tokens it signed within their -key-refresh.\n" +
		"If it was the active key, another signs at once: the key before it while it is held,\n" +
		"else a published key ahead of its activation, else a new key. Then \"key rotate\".\n",
	"rotate-kek": "Reseals every signing key under the KEK in $" + newKEKEnv + ", from the one in $" + kekEnv + "\n" +
		"(or $" + oldKEKEnv + "), all or nothing. First restart the servers with " + kekEnv + "=NEW and\n" +
		oldKEKEnv + "=OLD; after this command, restart them with " + kekEnv + "=NEW alone, and destroy OLD.\n",
}

// keyView is what the key commands print of a managed signing key:
// never its material.
type keyView struct {
	KID        string     `json:"kid"`
	Algorithm  string     `json:"alg"`
	Generation int64      `json:"generation"`
	State      string     `json:"state"`
	Published  time.Time  `json:"published_at"`
	Active     time.Time  `json:"active_at"`
	Retire     *time.Time `json:"retire_at,omitempty"`
	Delete     *time.Time `json:"delete_at,omitempty"`
	Revoked    *time.Time `json:"revoked_at,omitempty"`
	// ActiveIn is the time from now to Active, for "key rotate".
	ActiveIn string `json:"active_in,omitempty"`
}

func keyViewOf(k m2mauth.ManagedKeyInfo) keyView {
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return keyView{
		KID: k.KID, Algorithm: k.Algorithm, Generation: k.Generation, State: string(k.State),
		Published: k.PublishedAt.UTC(), Active: k.ActiveAt.UTC(),
		Retire: opt(k.RetireAt), Delete: opt(k.DeleteAt), Revoked: opt(k.RevokedAt),
	}
}

// keyCommand runs "key <command>": see keySynopsis. mainUsage prints the
// usage of the whole command.
func keyCommand(g globals, args []string, stdout, stderr io.Writer, mainUsage func()) error {
	if len(args) == 0 {
		mainUsage()
		return errUsage
	}
	cmd := args[0]
	if cmd == "-h" || cmd == "-help" || cmd == "--help" {
		mainUsage()
		return flag.ErrHelp
	}
	if _, ok := keySynopsis[cmd]; !ok {
		fmt.Fprintf(stderr, "unknown key command %q\n", cmd)
		mainUsage()
		return errUsage
	}
	fs := flag.NewFlagSet("key "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: example [global flags] key %s\n", keySynopsis[cmd])
		fmt.Fprint(stderr, keyHelp[cmd])
		fs.PrintDefaults()
	}
	var kid string
	if cmd == "revoke" {
		fs.StringVar(&kid, "kid", "", `the kid of the key to revoke, as "key list" shows it`)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err)
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	case cmd == "revoke" && kid == "":
		fmt.Fprintln(stderr, `-kid is required: "key list" shows the kids`)
		fs.Usage()
		return errUsage
	}

	d, err := parseDB(g.db)
	if err != nil {
		return err
	}
	if d.memory {
		return errors.New(`the key commands manage the signing keys kept in a database; -db memory keeps none`)
	}
	sched, err := g.keys.resolve()
	if err != nil && g.keys.refresh == 0 {
		// -key-refresh is the servers', checked when they start: a
		// schedule that a server with a shorter one accepts (the
		// banner's command line for it) is accepted here too.
		loosest := g.keys
		loosest.refresh = minKeyRefresh
		if sched, err = loosest.resolve(); err == nil {
			// This command's own, while it runs: the servers' default,
			// which is under the propagation delay.
			sched.refresh = defaultRefresh(sched.propagationDelay)
		}
	}
	if err != nil {
		return err
	}
	var sealer *m2mauth.AESKeySealer
	var fromKEK string // rotate-kek: the id of the KEK in $M2MAUTH_KEK
	if cmd == "rotate-kek" {
		sealer, fromKEK, err = rotationSealer()
	} else {
		sealer, _, err = kekSealer()
	}
	if err != nil {
		return err
	}

	ctx := context.Background()
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	// Only "rotate" may start the keys of a new database.
	b, err := openBackend(ctx, d, backendOptions{pool: defaultPool(), auditLog: logger, existing: cmd != "rotate"})
	if err != nil {
		return err
	}
	defer b.close()
	enc := json.NewEncoder(stdout)

	if cmd == "rotate-kek" {
		return rotateKEK(ctx, b, sealer, fromKEK, enc, stderr)
	}
	// "list" leaves a database without keys so (the first server makes
	// the first key), and "revoke" of a kid the database does not hold
	// changes nothing.
	rows, err := b.sql.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", b.kind, err)
	}
	switch {
	case cmd == "list" && len(rows) == 0:
		fmt.Fprintf(stderr, "no managed signing keys yet: the first server started with $%s makes one\n", kekEnv)
		return nil
	case cmd == "revoke" && !slices.ContainsFunc(rows, func(r m2mauth.StoredKey) bool { return r.KID == kid }):
		return fmt.Errorf(`no signing key %q: "key list" shows the kids`, kid)
	}
	// The keys are opened as a server opens them, so a KEK that does not
	// open them is an error here too; what a server's refresh would do
	// (delete the keys past their time, publish the next key when it is
	// due) is done, and audited, as it would be.
	keys, err := openManagedKeys(ctx, b, sealer, managedAlg(g), sched, b.auditor, logger)
	if err != nil {
		return err
	}
	defer keys.Close()

	switch cmd {
	case "rotate":
		info, err := keys.Rotate(ctx)
		if err != nil {
			return err
		}
		v := keyViewOf(info)
		v.ActiveIn = time.Until(info.ActiveAt).Round(time.Second).String()
		fmt.Fprintf(stderr, "published signing key %s (generation %d): running servers add it to their JWKS within their -key-refresh, and sign with it from %s\n",
			info.KID, info.Generation, v.Active.Format(time.RFC3339))
		return enc.Encode(v)
	case "revoke":
		if err := keys.Revoke(ctx, kid); err != nil {
			if errors.Is(err, m2mauth.ErrKeyNotFound) {
				return fmt.Errorf(`no signing key %q: "key list" shows the kids`, kid)
			}
			return err
		}
		list, err := keys.Keys(ctx)
		if err != nil {
			return err
		}
		for _, k := range list {
			if k.State == m2mauth.KeyStateActive {
				fmt.Fprintf(stderr, "revoked signing key %s: running servers leave it out of their JWKS and refuse the tokens it signed within their -key-refresh; %s signs now\n", kid, k.KID)
			}
		}
		for _, k := range list {
			if k.KID == kid {
				return enc.Encode(keyViewOf(k))
			}
		}
		return nil // deleted already: it was past its time
	}
	list, err := keys.Keys(ctx)
	if err != nil {
		return err
	}
	for _, k := range list {
		if err := enc.Encode(keyViewOf(k)); err != nil {
			return err
		}
	}
	return nil
}

// rotationSealer is the sealer of a KEK rotation: it seals under
// $M2MAUTH_NEW_KEK and opens under it, $M2MAUTH_KEK and, when set,
// $M2MAUTH_OLD_KEK. The new KEK must differ from $M2MAUTH_KEK, whose id
// it returns.
func rotationSealer() (*m2mauth.AESKeySealer, string, error) {
	current, _, err := kekSealer()
	if err != nil {
		return nil, "", err
	}
	if os.Getenv(newKEKEnv) == "" {
		return nil, "", fmt.Errorf(`"key rotate-kek" reads the new KEK from $%s (and the current one from $%s); make one with: openssl rand -base64 32`, newKEKEnv, kekEnv)
	}
	next, err := readKEK(newKEKEnv)
	if err != nil {
		return nil, "", err
	}
	defer clear(next)
	previous := [][]byte{}
	for _, name := range []string{kekEnv, oldKEKEnv} {
		if os.Getenv(name) == "" {
			continue
		}
		kek, err := readKEK(name)
		if err != nil {
			return nil, "", err
		}
		defer clear(kek)
		previous = append(previous, kek)
	}
	sealer, err := m2mauth.NewAESKeySealer(next, previous...)
	if err != nil {
		return nil, "", fmt.Errorf("$%s: %w", newKEKEnv, err)
	}
	if sealer.KEKID() == current.KEKID() {
		return nil, "", fmt.Errorf("$%s holds the KEK that $%s holds: give the new KEK in $%s", newKEKEnv, kekEnv, newKEKEnv)
	}
	return sealer, current.KEKID(), nil
}

// rotateKEK reseals every key of b under sealer's KEK, all or nothing,
// and prints how many keys it resealed and the ids of the KEKs, the
// one before being from.
func rotateKEK(ctx context.Context, b *backend, sealer *m2mauth.AESKeySealer, from string, enc *json.Encoder, stderr io.Writer) error {
	n, err := m2mauth.ResealKeys(ctx, b.sql, sealer, sealer)
	if err != nil {
		return fmt.Errorf("%s: nothing was resealed: %w", b.kind, err)
	}
	fmt.Fprintf(stderr, "resealed %d signing keys under KEK %s: set %s to the new KEK on every server, drop %s, and destroy the old KEK\n",
		n, sealer.KEKID(), kekEnv, oldKEKEnv)
	return enc.Encode(map[string]any{"resealed": n, "kek": sealer.KEKID(), "previous_kek": from})
}
