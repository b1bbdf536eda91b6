package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/m2mauth/m2mauth"
)

// This file holds the signing keys managed in the database: the
// environment variables that carry the key-encryption keys (KEKs) they
// are sealed under, the flags that say when a key is published, signs
// and is seen by every server, and the choice serve makes between one
// configured key and keys managed in the database.

// The environment variables of managed signing keys. A KEK is base64 of
// 32 random bytes, made with: openssl rand -base64 32.
const (
	// kekEnv is the KEK the keys are sealed under. With a database
	// (not memory), setting it makes serve sign with managed keys.
	kekEnv = "M2MAUTH_KEK"
	// oldKEKEnv is the KEK before it, during a KEK rotation: keys sealed
	// under either open.
	oldKEKEnv = "M2MAUTH_OLD_KEK"
	// newKEKEnv is the KEK "key rotate-kek" reseals the keys under.
	newKEKEnv = "M2MAUTH_NEW_KEK"
)

// Defaults of the key schedule's flags.
const (
	defaultJWKSMaxAge       = 5 * time.Minute     // m2mauth.JWKSConfig's
	defaultRotationInterval = 90 * 24 * time.Hour // m2mauth.ManagedKeysConfig's
	defaultKeyRefresh       = 30 * time.Second    // likewise, unless the propagation delay is short
	maxJWKSMaxAge           = 24 * time.Hour      // the most m2mauth.JWKSConfig takes
	minKeyRefresh           = 10 * time.Millisecond
)

// defaultManagedAlg is the algorithm of new managed keys when
// -signing-alg is not given: a public-key algorithm, since publishing
// the next key before it signs is what managed keys are for.
const defaultManagedAlg = jose.ES256

// keySchedule is when managed keys are published, sign and are seen:
// the global flags -jwks-max-age, -key-propagation-delay and
// -key-rotation-interval, which serve and the key commands must agree
// on (a key published by "key rotate" signs after the propagation
// delay the command was given), and serve's -key-refresh.
type keySchedule struct {
	// jwksMaxAge is how long verifiers may cache the JWKS.
	jwksMaxAge time.Duration
	// propagationDelay is the time from a key's publication to its
	// activation. 0: twice jwksMaxAge.
	propagationDelay time.Duration
	// rotationInterval is the time from one key's activation to the
	// next's.
	rotationInterval time.Duration
	// refresh is how often a server reads the keys from the database.
	// 0: 30s, or a quarter of propagationDelay when that is shorter.
	refresh time.Duration
}

// addFlags adds the schedule's global flags to fs.
func (s *keySchedule) addFlags(fs *flag.FlagSet) {
	fs.DurationVar(&s.jwksMaxAge, "jwks-max-age", defaultJWKSMaxAge, "how long verifiers and caches may reuse /.well-known/jwks.json without asking again (Cache-Control max-age), from 1s to 24h; with managed signing keys never past the next key change")
	fs.DurationVar(&s.propagationDelay, "key-propagation-delay", 0, "managed signing keys: the time from a key's publication in the JWKS to its first signature, so that every verifier has it first; at least -jwks-max-age plus serve's -key-refresh. Give serve and the key commands the same value (default: 2 × -jwks-max-age)")
	fs.DurationVar(&s.rotationInterval, "key-rotation-interval", defaultRotationInterval, "managed signing keys: the time from one key's first signature to the next key's; longer than -key-propagation-delay")
}

// resolve checks s and returns it with its defaults filled in.
func (s keySchedule) resolve() (keySchedule, error) {
	// The flags' defaults are set by their definitions: a zero given on
	// the command line is refused below, not taken for the default.
	switch {
	case s.jwksMaxAge < time.Second || s.jwksMaxAge > maxJWKSMaxAge:
		return s, fmt.Errorf("-jwks-max-age %v: want from 1s to %v", s.jwksMaxAge, maxJWKSMaxAge)
	case s.propagationDelay < 0:
		return s, errors.New("-key-propagation-delay must not be negative")
	case s.propagationDelay == 0:
		s.propagationDelay = 2 * s.jwksMaxAge
	}
	switch {
	case s.refresh < 0:
		return s, errors.New("-key-refresh must not be negative")
	case s.refresh == 0:
		s.refresh = defaultRefresh(s.propagationDelay)
	case s.refresh < minKeyRefresh:
		return s, fmt.Errorf("-key-refresh must be at least %v", minKeyRefresh)
	}
	switch {
	case s.propagationDelay < s.jwksMaxAge+s.refresh:
		return s, fmt.Errorf("-key-propagation-delay %v is shorter than -jwks-max-age %v plus -key-refresh %v: a verifier that cached the key set just before a key was published could meet a token the key signed before it fetches the set again",
			s.propagationDelay, s.jwksMaxAge, s.refresh)
	case s.rotationInterval <= s.propagationDelay:
		return s, fmt.Errorf("-key-rotation-interval %v must be longer than -key-propagation-delay %v", s.rotationInterval, s.propagationDelay)
	}
	return s, nil
}

// defaultRefresh is -key-refresh by default for a propagation delay: a
// quarter of it, up to defaultKeyRefresh.
func defaultRefresh(propagationDelay time.Duration) time.Duration {
	return max(min(defaultKeyRefresh, propagationDelay/4), minKeyRefresh)
}

// flagArgs is s as global flags, those not at their default.
func (s keySchedule) flagArgs() []string {
	var args []string
	if s.jwksMaxAge != 0 && s.jwksMaxAge != defaultJWKSMaxAge {
		args = append(args, "-jwks-max-age", s.jwksMaxAge.String())
	}
	if s.propagationDelay != 0 {
		args = append(args, "-key-propagation-delay", s.propagationDelay.String())
	}
	if s.rotationInterval != 0 && s.rotationInterval != defaultRotationInterval {
		args = append(args, "-key-rotation-interval", s.rotationInterval.String())
	}
	return args
}

// managedAlg is the algorithm of the managed keys g makes: -signing-alg
// when given, else ES256.
func managedAlg(g globals) jose.SignatureAlgorithm {
	if g.algSet {
		return g.alg
	}
	return defaultManagedAlg
}

// readKEK reads the KEK in the environment variable name, which is set.
// Its errors never repeat the value.
func readKEK(name string) ([]byte, error) {
	kek, err := m2mauth.ParseKEK(os.Getenv(name))
	if err != nil {
		return nil, fmt.Errorf("$%s: %w; a KEK is base64 of %d random bytes, made with: openssl rand -base64 32", name, err, m2mauth.KEKSize)
	}
	return kek, nil
}

// kekSealer is the sealer of $M2MAUTH_KEK, which opens what
// $M2MAUTH_OLD_KEK sealed too when that is set. It returns the ids of
// both KEKs (the second "" without an old one), never the KEKs.
func kekSealer() (sealer *m2mauth.AESKeySealer, oldID string, err error) {
	if os.Getenv(kekEnv) == "" {
		return nil, "", fmt.Errorf("$%s is not set: it holds the key-encryption key (KEK) the signing keys are sealed under in the database; make one with: openssl rand -base64 32", kekEnv)
	}
	kek, err := readKEK(kekEnv)
	if err != nil {
		return nil, "", err
	}
	defer clear(kek)
	var previous [][]byte
	if os.Getenv(oldKEKEnv) != "" {
		old, err := readKEK(oldKEKEnv)
		if err != nil {
			return nil, "", err
		}
		defer clear(old)
		oldSealer, err := m2mauth.NewAESKeySealer(old)
		if err != nil {
			return nil, "", fmt.Errorf("$%s: %w", oldKEKEnv, err)
		}
		oldID = oldSealer.KEKID()
		previous = append(previous, old)
	}
	if sealer, err = m2mauth.NewAESKeySealer(kek, previous...); err != nil {
		return nil, "", fmt.Errorf("$%s: %w", kekEnv, err)
	}
	if oldID == sealer.KEKID() {
		oldID = "" // the same KEK twice: no rotation under way
	}
	return sealer, oldID, nil
}

// serverKeys are serve's signing keys: one configured key, or keys
// managed in the database.
type serverKeys struct {
	static *jose.JSONWebKey // one key; nil when managed
	// sealer, oldKEK and alg are those of managed keys: the sealer of
	// $M2MAUTH_KEK (and $M2MAUTH_OLD_KEK), the old KEK's id, and the
	// algorithm of new keys.
	sealer *m2mauth.AESKeySealer
	oldKEK string
	alg    jose.SignatureAlgorithm
}

// managed reports whether the keys are managed in the database.
func (k *serverKeys) managed() bool { return k.sealer != nil }

// kind names where the keys come from, for the log.
func (k *serverKeys) kind() string {
	if k.managed() {
		return "managed"
	}
	return "configured"
}

// chooseKeys settles where serve's signing keys come from, before the
// database is opened: managed in the database when $M2MAUTH_KEK is set
// and -db is one (not memory), else the one key of signingKey. It
// refuses $M2MAUTH_KEK beside a configured key, and warns on log when
// it ignores $M2MAUTH_KEK for memory.
func chooseKeys(d *dbSpec, g globals, log io.Writer) (*serverKeys, error) {
	kekSet := os.Getenv(kekEnv) != ""
	switch {
	case !kekSet && os.Getenv(oldKEKEnv) != "":
		return nil, fmt.Errorf("$%s is set without $%s: during a KEK rotation $%s holds the new KEK and $%s the one before it", oldKEKEnv, kekEnv, kekEnv, oldKEKEnv)
	case kekSet && d.memory:
		fmt.Fprintf(log, "warning: $%s is ignored: -db memory keeps no signing keys between processes\n", kekEnv)
		kekSet = false
	case kekSet && (os.Getenv("M2MAUTH_SIGNING_KEY") != "" || g.keyFile != ""):
		given := "$M2MAUTH_SIGNING_KEY"
		if g.keyFile != "" {
			given = "-signing-key-file"
		}
		return nil, fmt.Errorf("both $%s and %s are given: $%s makes the servers sign with keys managed in the database, which rotate by themselves, and %s with one key of yours. "+
			"Unset $%s to sign with your key, or leave out %s to let the database keep the keys (tokens signed by your key are then refused)", kekEnv, given, kekEnv, given, kekEnv, given)
	}
	if !kekSet {
		key, err := signingKey(d, g.alg, g.keyFile, log)
		if err != nil {
			return nil, err
		}
		return &serverKeys{static: &key}, nil
	}
	sealer, oldID, err := kekSealer()
	if err != nil {
		return nil, err
	}
	return &serverKeys{sealer: sealer, oldKEK: oldID, alg: managedAlg(g)}, nil
}

// openManagedKeys opens the managed signing keys of b's database, sealed
// by sealer, on schedule s (resolved). A key that does not open, and a
// database that cannot be read, are errors naming the database and the
// KEK, never a reason to make a new key.
func openManagedKeys(ctx context.Context, b *backend, sealer *m2mauth.AESKeySealer, alg jose.SignatureAlgorithm, s keySchedule, auditor m2mauth.Auditor, logger *slog.Logger) (*m2mauth.ManagedKeys, error) {
	if b.sql == nil {
		return nil, errors.New("managed signing keys need a database; -db memory has none")
	}
	keys, err := m2mauth.NewManagedKeys(ctx, b.sql, sealer, m2mauth.ManagedKeysConfig{
		Algorithm:        alg,
		PropagationDelay: s.propagationDelay,
		RotationInterval: s.rotationInterval,
		RefreshInterval:  s.refresh,
		Auditor:          auditor,
		Logger:           logger,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: the signing keys managed there, with KEK %s from $%s: %w", b.kind, sealer.KEKID(), kekEnv, err)
	}
	return keys, nil
}

// describe says how keys are managed, for the banner and the log:
// "managed in the database, KEK …, rotating every …, propagation delay …".
func (k *serverKeys) describe(s keySchedule) string {
	kek := "KEK " + k.sealer.KEKID()
	if k.oldKEK != "" {
		kek += " (and the previous KEK " + k.oldKEK + ")"
	}
	return fmt.Sprintf("managed in the database, %s, rotating every %s, propagation delay %s, new keys %s",
		kek, shortDuration(s.rotationInterval), shortDuration(s.propagationDelay), k.alg)
}

// shortDuration writes d as a duration flag takes it, without the zero
// units ("2160h", not "2160h0m0s"), and whole days also as days.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	if d >= 48*time.Hour && d%(24*time.Hour) == 0 {
		s += fmt.Sprintf(" (%d days)", d/(24*time.Hour))
	}
	return s
}
