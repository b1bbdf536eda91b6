package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/m2mauth/m2mauth"
)

// makeKeyCommand is the shell command that writes a new key to file (a
// shell word), readable by its owner only.
func makeKeyCommand(file string) string {
	return "(umask 077 && head -c 32 /dev/urandom | base64 > " + file + ")"
}

// signingKey finds the HS256 key of the server: $M2MAUTH_SIGNING_KEY,
// else the -signing-key-file keyFile, which must exist. Without either, a
// SQLite database keeps its key beside the file (generated on the first
// start), memory uses a new key for this process, and a server database
// is refused: its replicas must share one key. It reports on log what it
// did, never the key.
func signingKey(d *dbSpec, keyFile string, log io.Writer) ([]byte, error) {
	if v := os.Getenv("M2MAUTH_SIGNING_KEY"); v != "" {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("M2MAUTH_SIGNING_KEY is not base64: %w", err)
		}
		if len(key) < m2mauth.MinHMACKeyLen {
			return nil, fmt.Errorf("M2MAUTH_SIGNING_KEY must decode to at least %d bytes", m2mauth.MinHMACKeyLen)
		}
		if keyFile != "" {
			fmt.Fprintf(log, "warning: M2MAUTH_SIGNING_KEY is set, so -signing-key-file %s is not read\n", keyFile)
		}
		return key, nil
	}
	if keyFile != "" {
		key, err := readKeyFile(keyFile, log)
		if errors.Is(err, fs.ErrNotExist) {
			msg := fmt.Sprintf("-signing-key-file %s does not exist; create it with:\n  %s", keyFile, makeKeyCommand(shellQuote(keyFile)))
			if d.file != "" {
				msg += "\nor leave -signing-key-file out to keep the key beside the SQLite file, made on the first start"
			}
			return nil, errors.New(msg)
		}
		return key, err
	}
	switch {
	case d.memory:
		fmt.Fprintln(log, "warning: no signing key configured; using a new one for this process only")
		return newKey()
	case d.server():
		return nil, fmt.Errorf("no signing key: the servers on %s must all sign with one key, or tokens issued by one are refused by the others. "+
			"Make a key once and give every server the same one, either\n"+
			"  in the environment: M2MAUTH_SIGNING_KEY=KEY, KEY being the output of: head -c 32 /dev/urandom | base64\n"+
			"  or in a file:       -signing-key-file FILE, FILE made with: %s", d.kind, makeKeyCommand("FILE"))
	}
	keyFile = strings.TrimSuffix(d.file, filepath.Ext(d.file)) + ".key"
	key, err := readKeyFile(keyFile, log)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if key, err = newKey(); err != nil {
		return nil, err
	}
	// O_EXCL: a key another process wrote meanwhile is not replaced.
	f, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return readKeyFile(keyFile, log)
	}
	if err != nil {
		return nil, fmt.Errorf("writing the signing key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	if err = errors.Join(err, f.Close()); err != nil {
		os.Remove(keyFile)
		return nil, fmt.Errorf("writing the signing key: %w", err)
	}
	fmt.Fprintf(log, "warning: generated a new signing key and saved it to %s (mode 0600); keep it secret, and set M2MAUTH_SIGNING_KEY in production\n", keyFile)
	return key, nil
}

// readKeyFile reads a base64 key from file, warning on log when others
// may read it. A missing file is an error wrapping fs.ErrNotExist.
func readKeyFile(file string, log io.Writer) ([]byte, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(key) < m2mauth.MinHMACKeyLen {
		return nil, fmt.Errorf("%s: want base64 of at least %d bytes, as written by: head -c 32 /dev/urandom | base64", file, m2mauth.MinHMACKeyLen)
	}
	if st, err := os.Stat(file); err == nil && st.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(log, "warning: %s is readable by others (mode %v); chmod 600 it\n", file, st.Mode().Perm())
	}
	return key, nil
}

func newKey() ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return key, nil
}
