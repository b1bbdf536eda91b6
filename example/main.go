// Command example is a small, production-shaped authorization server and
// protected API built with m2mauth.
//
//	go run ./example                  # serve on 127.0.0.1:8080, SQLite file m2mauth.db
//	go run ./example client list      # administer clients
//
// Usage:
//
//	example [global flags] [command]
//
// Global flags (before the command):
//
//	-db string                 where clients live: a SQLite file path, a
//	                           postgres://… or mysql://… URL, or "memory"
//	                           (default "m2mauth.db")
//	-issuer string             the "iss" of tokens (default "http://127.0.0.1:8080")
//	-audience string           the API's audience (default "https://api.example.com")
//	-signing-key-file string   file holding the base64 HS256 key
//	                           (default: next to the SQLite file)
//
// Commands:
//
//	serve [flags]                      run the server (the default command)
//	client create -id ID [-audience AUD] -scopes "a b" [-ttl 1h]   (-ttl at most 24h)
//	client rotate-secret -id ID [-grace 24h]
//	client disable -id ID
//	client enable -id ID
//	client delete -id ID
//	client list
//
// Flags of serve (see "example serve -h"):
//
//	-addr 127.0.0.1:8080            listen address
//	-tls-cert FILE -tls-key FILE    serve HTTPS (TLS 1.2 or later)
//	-trusted-proxies NETS           TLS-terminating reverse proxies, e.g. 10.0.0.0/8
//	-forwarded-header NAME          the header they write: X-Forwarded-For (default) or Forwarded
//	-insecure-http                  INSECURE: plain HTTP on any address, from anywhere
//	-db-max-open 20                 database connections open at most
//	-db-max-idle 10                 idle connections kept
//	-db-conn-max-lifetime 30m       connections are replaced after this
//	-store-timeout 5s               then a token request is answered 503 with Retry-After
//	-max-concurrent 256             token requests handled at once
//	-require-audit                  answer 503 while the audit table cannot record
//	-audit-spill FILE               where audit events wait while the table cannot be
//	                                written (default: m2mauth-audit.spill beside
//	                                the SQLite file, or in the working directory)
//
// Plain HTTP is served only on a loopback address unless -trusted-proxies
// names the TLS-terminating proxy in front, or -insecure-http is given.
//
// The signing key comes from $M2MAUTH_SIGNING_KEY (base64, at least 32
// bytes), else from the key file, else a new one is generated and written
// to the key file with mode 0600 so restarts keep tokens valid.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "example:", err)
		}
		os.Exit(exitCode(err))
	}
}

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

// usageError marks a flag parsing error, which the flag package has
// already printed with the usage.
func usageError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}

func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// globals are the flags that come before the command.
type globals struct {
	db, issuer, audience, keyFile string
}

const usage = `usage: example [global flags] [command]

commands:
  serve [flags]                      run the server (default); "serve -h" lists its flags
  client create -id ID [-audience AUD] -scopes "a b" [-ttl 1h]   (-ttl at most 24h)
  client rotate-secret -id ID [-grace 24h]
  client disable -id ID
  client enable -id ID
  client delete -id ID
  client list

global flags:
`

func run(args []string, stdout, stderr io.Writer) error {
	var g globals
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&g.db, "db", "m2mauth.db", `a SQLite file path, a postgres://… or mysql://… URL, or "memory"`)
	fs.StringVar(&g.issuer, "issuer", "http://127.0.0.1:8080", `the "iss" of issued tokens`)
	fs.StringVar(&g.audience, "audience", "https://api.example.com", "the audience of the protected API")
	fs.StringVar(&g.keyFile, "signing-key-file", "", "file holding the base64 HS256 signing key (default: next to the SQLite file)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return serve(g, nil, stdout, stderr)
	}
	switch rest[0] {
	case "serve":
		return serve(g, rest[1:], stdout, stderr)
	case "client":
		return clientCommand(g, rest[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n", rest[0])
		fs.Usage()
		return errUsage
	}
}
