package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/m2mauth/m2mauth"
)

// This file holds every line of the example that depends on the signing
// algorithm: the -signing-alg flag, the formats of a key (an HS256
// secret in base64; a private key as PEM or as a JWK), the file a
// generated key is kept in, the command that makes one, and whether its
// public half can be published.

// defaultAlg is the default of -signing-alg.
const defaultAlg = jose.HS256

// secretKey reports whether alg signs with a secret key, which verifiers
// must share and which is never published.
func secretKey(alg jose.SignatureAlgorithm) bool { return alg == jose.HS256 }

// signingAlg is the value of -signing-alg: one of
// m2mauth.SupportedAlgorithms, matched without regard to case.
type signingAlg jose.SignatureAlgorithm

func (a *signingAlg) String() string { return string(*a) }

func (a *signingAlg) Set(s string) error {
	var names []string
	for _, alg := range m2mauth.SupportedAlgorithms() {
		if strings.EqualFold(s, string(alg)) {
			*a = signingAlg(alg)
			return nil
		}
		names = append(names, string(alg))
	}
	return fmt.Errorf("want one of %s", strings.Join(names, ", "))
}

// makeKeyCommand is the shell command that writes a new key for alg to
// file (a shell word), readable by its owner only.
func makeKeyCommand(alg jose.SignatureAlgorithm, file string) string {
	var cmd string
	switch alg {
	case jose.ES256:
		cmd = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + file
	case jose.EdDSA:
		cmd = "openssl genpkey -algorithm ED25519 -out " + file
	case jose.RS256, jose.PS256:
		cmd = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " + file
	default:
		cmd = "head -c 32 /dev/urandom | base64 > " + file
	}
	return "(umask 077 && " + cmd + ")"
}

// envKeyHint says what to put in M2MAUTH_SIGNING_KEY for alg.
func envKeyHint(alg jose.SignatureAlgorithm) string {
	if alg == jose.HS256 {
		return "M2MAUTH_SIGNING_KEY=KEY, KEY being the output of: head -c 32 /dev/urandom | base64"
	}
	return `M2MAUTH_SIGNING_KEY="$(cat FILE)", FILE made as below (a PEM private key; a JWK works too)`
}

// defaultKeyFile is where a SQLite database at db keeps its generated key
// for alg: NAME.key (base64) for HS256, NAME-es256.pem (PEM) and so on
// for the others, so that changing -signing-alg never meets the key of
// another algorithm.
func defaultKeyFile(db string, alg jose.SignatureAlgorithm) string {
	stem := strings.TrimSuffix(db, filepath.Ext(db))
	if secretKey(alg) {
		return stem + ".key"
	}
	return stem + "-" + strings.ToLower(string(alg)) + ".pem"
}

// signingKey finds the signing key of the server for alg:
// $M2MAUTH_SIGNING_KEY, else the -signing-key-file keyFile, which must
// exist. Without either, a SQLite database keeps its key beside the file
// (generated on the first start), memory uses a new key for this
// process, and a server database is refused: its replicas must share one
// key. It reports on log what it did, never the key.
func signingKey(d *dbSpec, alg jose.SignatureAlgorithm, keyFile string, log io.Writer) (jose.JSONWebKey, error) {
	if v := os.Getenv("M2MAUTH_SIGNING_KEY"); v != "" {
		key, err := parseKey(alg, []byte(v), "M2MAUTH_SIGNING_KEY")
		if err != nil {
			return jose.JSONWebKey{}, err
		}
		if keyFile != "" {
			fmt.Fprintf(log, "warning: M2MAUTH_SIGNING_KEY is set, so -signing-key-file %s is not read\n", keyFile)
		}
		return key, nil
	}
	if keyFile != "" {
		key, err := readKeyFile(alg, keyFile, log)
		if errors.Is(err, fs.ErrNotExist) {
			msg := fmt.Sprintf("-signing-key-file %s does not exist; create it with:\n  %s", keyFile, makeKeyCommand(alg, shellQuote(keyFile)))
			if d.file != "" {
				msg += "\nor leave -signing-key-file out to keep the key beside the SQLite file, made on the first start"
			}
			return jose.JSONWebKey{}, errors.New(msg)
		}
		return key, err
	}
	switch {
	case d.memory:
		fmt.Fprintln(log, "warning: no signing key configured; using a new one for this process only")
		return m2mauth.GenerateSigningKey(alg)
	case d.server():
		return jose.JSONWebKey{}, fmt.Errorf("no signing key: the servers on %s must all sign with one key, or tokens issued by one are refused by the others. "+
			"Make a key once and give every server the same one, either\n"+
			"  in the environment: %s\n"+
			"  or in a file:       -signing-key-file FILE, FILE made with: %s", d.kind, envKeyHint(alg), makeKeyCommand(alg, "FILE"))
	}
	keyFile = defaultKeyFile(d.file, alg)
	key, err := readKeyFile(alg, keyFile, log)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if key, err = m2mauth.GenerateSigningKey(alg); err != nil {
		return jose.JSONWebKey{}, err
	}
	data, err := encodeKey(key)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	err = writeNewFile(keyFile, data)
	if errors.Is(err, fs.ErrExist) {
		// Another process starting on the same database wrote its key
		// first: both use that one.
		return readKeyFile(alg, keyFile, log)
	}
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("writing the signing key: %w", err)
	}
	fmt.Fprintf(log, "warning: generated a new signing key and saved it to %s (mode 0600); keep it secret, and set M2MAUTH_SIGNING_KEY in production\n", keyFile)
	return key, nil
}

// writeNewFile creates file, mode 0600, holding data, or returns an error
// wrapping fs.ErrExist if it exists. The file appears whole or not at
// all: data is written and synced to a temporary file beside it, which is
// then linked into place, so a process that reads file meanwhile never
// sees it empty or half written.
func writeNewFile(file string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if err = errors.Join(err, tmp.Close()); err != nil {
		return err
	}
	err = os.Link(tmp.Name(), file)
	var le *os.LinkError
	if errors.As(err, &le) && !errors.Is(err, fs.ErrExist) {
		// No hard links on this file system: create the file in place,
		// O_EXCL keeping a key written meanwhile.
		return writeExclusive(file, data)
	}
	return err
}

// writeExclusive creates file, mode 0600, holding data, or returns an
// error wrapping fs.ErrExist if it exists. A reader may see it before it
// is whole: writeNewFile is the way, where hard links work.
func writeExclusive(file string, data []byte) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		os.Remove(file)
	}
	return err
}

// encodeKey is a generated key as the example stores it: an HS256 secret
// in base64, a private key as PKCS #8 PEM.
func encodeKey(k jose.JSONWebKey) ([]byte, error) {
	if secret, ok := k.Key.([]byte); ok {
		return []byte(base64.StdEncoding.EncodeToString(secret) + "\n"), nil
	}
	return m2mauth.MarshalKeyPEM(k)
}

// readKeyFile reads the key for alg from file, warning on log when others
// may read it. A missing file is an error wrapping fs.ErrNotExist.
func readKeyFile(alg jose.SignatureAlgorithm, file string, log io.Writer) (jose.JSONWebKey, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	key, err := parseKey(alg, raw, file)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	if mode, open := openToOthers(file); open {
		fmt.Fprintf(log, "warning: %s is readable by others (mode %v); chmod 600 it\n", file, mode)
	}
	return key, nil
}

// openToOthers reports whether users other than its owner may read or
// write file, with its permissions; false if it cannot be read.
func openToOthers(file string) (fs.FileMode, bool) {
	st, err := os.Stat(file)
	if err != nil {
		return 0, false
	}
	return st.Mode().Perm(), st.Mode().Perm()&0o077 != 0
}

// parseKey reads the signing key for alg from raw, found in source (a
// file name or the variable's): a PEM private key, a JWK, or for HS256 a
// base64 secret of at least 32 bytes. A key made for another algorithm
// is refused with a message naming the algorithm it is for.
func parseKey(alg jose.SignatureAlgorithm, raw []byte, source string) (jose.JSONWebKey, error) {
	text := bytes.TrimSpace(raw)
	key, err := decodeKey(alg, text)
	if err == nil {
		if key.IsPublic() {
			return jose.JSONWebKey{}, fmt.Errorf("%s holds a public key; the server signs with the private key (the public one is what it publishes)", source)
		}
		return key, nil
	}
	if fits := keyAlgorithms(text); len(fits) > 0 {
		return jose.JSONWebKey{}, fmt.Errorf("%s holds a key for %s, not for -signing-alg %s: give -signing-alg %s, or a key made for %s",
			source, strings.Join(fits, " or "), alg, fits[0], alg)
	}
	if alg == jose.HS256 {
		return jose.JSONWebKey{}, fmt.Errorf("%s: want base64 of at least %d bytes, as written by: head -c 32 /dev/urandom | base64 (or an HS256 JWK)", source, m2mauth.MinHMACKeyLen)
	}
	return jose.JSONWebKey{}, fmt.Errorf("%s: want a private key for %s, as PEM (PKCS #8, SEC 1 or PKCS #1) or as a JWK: %v", source, alg, err)
}

// decodeKey reads text as a key for alg, by its format: PEM, JWK, or
// base64 for an HS256 secret.
func decodeKey(alg jose.SignatureAlgorithm, text []byte) (jose.JSONWebKey, error) {
	switch {
	case bytes.HasPrefix(text, []byte("-----BEGIN ")):
		return m2mauth.ParseKeyPEM(alg, "", text)
	case bytes.HasPrefix(text, []byte("{")):
		return m2mauth.ParseJWK(alg, text)
	case alg != jose.HS256:
		return jose.JSONWebKey{}, errors.New("neither PEM nor a JWK")
	}
	secret, err := base64.StdEncoding.DecodeString(string(text))
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	return m2mauth.NewHS256Key("", secret)
}

// keyAlgorithms lists the algorithms text is a key for.
func keyAlgorithms(text []byte) []string {
	var fits []string
	for _, alg := range m2mauth.SupportedAlgorithms() {
		if _, err := decodeKey(alg, text); err == nil {
			fits = append(fits, string(alg))
		}
	}
	return fits
}
