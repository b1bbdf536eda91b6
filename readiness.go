package m2mauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Pinger is implemented by client stores that can say whether they are
// reachable more cheaply than by looking a client up. A
// [ReadinessHandler] calls Ping instead of looking up a client.
type Pinger interface {
	// Ping returns nil when the store can answer lookups, and an error
	// saying why when it cannot; it honours ctx's deadline.
	Ping(ctx context.Context) error
}

// ReadinessConfig holds the tunables of a [ReadinessHandler]; every zero
// value is a working default.
type ReadinessConfig struct {
	// Timeout bounds each check: its context ends then, and a check that
	// has not answered soon after (a tenth of Timeout, at most 100ms)
	// fails with "timeout". Default: 2s.
	Timeout time.Duration
	// Checks are further checks, by name, run beside the store and key
	// checks; a check fails when it returns an error. The names "store"
	// and "keys" are taken. For example, the audit table of the sqlstore
	// package:
	//
	//	Checks: map[string]func(context.Context) error{
	//		"audit": func(context.Context) error { return auditor.AuditHealth() },
	//	}
	//
	// Default: none.
	Checks map[string]func(ctx context.Context) error
	// Logger receives the cause of every failed check, which is never
	// sent in the response. Default: [slog.Default].
	Logger *slog.Logger
}

// readinessProbeID is the client id a readiness check looks up in a
// store that is not a [Pinger]: a well-formed id, so that the store asks
// its database, which no client is expected to have (one that does is
// fine too).
const readinessProbeID = "m2mauth-readiness-probe"

// ReadinessHandler answers a readiness probe (a load balancer's, or a
// Kubernetes readinessProbe): whether this replica can serve tokens and
// validate them now. Mount it with
//
//	mux.Handle("GET /readyz", h)
//
// It checks, at once and each within ReadinessConfig.Timeout, that the
// client store answers (its Ping, when it is a [Pinger]; otherwise a
// lookup of a fixed client id that must return a client or
// [ErrClientNotFound]), that the key provider returns its signing key
// (or [ErrNoSigningKey], for a provider that only verifies) and at least
// one verification key, and every extra check. When all pass it answers
// 200 {"status":"ready"}; otherwise 503
// {"status":"not_ready","failed":{"store":"timeout"}}, each failed check
// named with "timeout" or "error" only: the causes, which may hold a
// database address, go to the logger. Both answers carry
// Cache-Control: no-store. HEAD gets the same status without a body;
// other methods get 405.
//
// A check still running when a probe times out is not started again by
// the next probe, which waits for the same run: a store that hangs holds
// one goroutine per check, not one per probe.
//
// Readiness is not liveness: keep a separate liveness endpoint (the
// example server's GET /healthz) that answers 200 while the process can
// serve HTTP at all, without asking the database. An orchestrator
// restarts a replica that fails liveness; a database outage should take
// replicas out of rotation, not restart them all.
//
// A ReadinessHandler is safe for concurrent use.
type ReadinessHandler struct {
	checks  []*readinessCheck
	timeout time.Duration
	logger  *slog.Logger
}

// readinessCheck is one named check, with the run in flight, if any.
type readinessCheck struct {
	name string
	fn   func(ctx context.Context) error
	mu   sync.Mutex
	run  *checkRun // nil when none is in flight
}

// checkRun is one run of a check; err is set before done is closed.
type checkRun struct {
	done chan struct{}
	err  error
	// giveUp is when probes stop waiting for the run: its context's
	// deadline, and a little grace for a check that honours its context
	// to say why it failed.
	giveUp time.Time
	// Under the check's mu: finished, the run has ended; reported, a
	// probe has logged that it did not answer in time.
	finished, reported bool
}

// errCheckTimeout is the cause logged for a check that did not answer in
// time.
var errCheckTimeout = errors.New("m2mauth: readiness check did not answer in time")

// errProbeEnded is the outcome of a check whose probe ended (its caller
// hung up) before the check answered: no failure of the check's.
var errProbeEnded = errors.New("m2mauth: readiness probe ended before the check answered")

// NewReadinessHandler returns a readiness handler that checks store,
// keys and the extra checks of cfg. store may be nil on a resource
// server, which has none; keys is required.
func NewReadinessHandler(store ClientStore, keys KeyProvider, cfg ReadinessConfig) (*ReadinessHandler, error) {
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	switch {
	case cfg.Timeout == 0:
		cfg.Timeout = 2 * time.Second
	case cfg.Timeout < time.Millisecond:
		return nil, fmt.Errorf("m2mauth: ReadinessConfig.Timeout %v is under a millisecond", cfg.Timeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &ReadinessHandler{timeout: cfg.Timeout, logger: cfg.Logger}
	if store != nil {
		h.checks = append(h.checks, &readinessCheck{name: "store", fn: storeCheck(store)})
	}
	h.checks = append(h.checks, &readinessCheck{name: "keys", fn: keysCheck(keys)})
	for name, fn := range cfg.Checks {
		switch {
		case name == "":
			return nil, errors.New("m2mauth: ReadinessConfig.Checks has an empty name")
		case name == "store" || name == "keys":
			return nil, fmt.Errorf("m2mauth: ReadinessConfig.Checks: the name %q is taken", name)
		case fn == nil:
			return nil, fmt.Errorf("m2mauth: ReadinessConfig.Checks: nil check %q", name)
		}
		h.checks = append(h.checks, &readinessCheck{name: name, fn: fn})
	}
	return h, nil
}

// storeCheck returns the check of store.
func storeCheck(store ClientStore) func(context.Context) error {
	if p, ok := store.(Pinger); ok {
		return p.Ping
	}
	return func(ctx context.Context) error {
		c, err := store.Client(ctx, readinessProbeID)
		switch {
		case errors.Is(err, ErrClientNotFound):
			return nil
		case err != nil:
			return err
		case c == nil:
			return errors.New("m2mauth: the store returned neither a client nor ErrClientNotFound")
		}
		return nil
	}
}

// keysCheck returns the check of keys.
func keysCheck(keys KeyProvider) func(context.Context) error {
	return func(ctx context.Context) error {
		k, err := keys.SigningKey(ctx)
		switch {
		case errors.Is(err, ErrNoSigningKey):
		case err != nil:
			return fmt.Errorf("m2mauth: signing key: %w", err)
		case k == nil:
			return errors.New("m2mauth: KeyProvider returned a nil signing key")
		}
		set, err := keys.VerificationKeys(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("m2mauth: verification keys: %w", err)
		case set == nil || len(set.Keys) == 0:
			return errors.New("m2mauth: KeyProvider has no verification key")
		}
		return nil
	}
}

// ServeHTTP runs the checks and answers with their outcome.
func (h *ReadinessHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		hdr.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMethodNotAllowed)
		w.Write([]byte(`{"status":"method_not_allowed"}`))
		return
	}
	failed := h.check(r.Context())
	body := []byte(`{"status":"ready"}`)
	status := http.StatusOK
	if len(failed) > 0 {
		status = http.StatusServiceUnavailable
		body, _ = json.Marshal(struct {
			Status string            `json:"status"`
			Failed map[string]string `json:"failed"`
		}{"not_ready", failed})
	}
	hdr.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// check runs every check at once and returns the failed ones, by name,
// with "timeout" or "error". wait logs the failures.
func (h *ReadinessHandler) check(ctx context.Context) map[string]string {
	errs := make([]error, len(h.checks))
	var wg sync.WaitGroup
	for i, c := range h.checks {
		wg.Go(func() { errs[i] = c.wait(ctx, h.timeout, h.logger) })
	}
	wg.Wait()
	var failed map[string]string
	ended := false
	for i, err := range errs {
		if err == nil {
			continue
		}
		if failed == nil {
			failed = make(map[string]string)
		}
		what := "error"
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errCheckTimeout) || errors.Is(err, errProbeEnded) {
			what = "timeout"
		}
		failed[h.checks[i].name] = what
		// The check goes on, and logs its own failure if it fails: a
		// caller with a shorter timeout than the checks' is no failure
		// to warn of.
		ended = ended || errors.Is(err, errProbeEnded)
	}
	if ended {
		h.logger.DebugContext(ctx, "m2mauth: readiness probe ended before its checks answered", "error", ctx.Err())
	}
	return failed
}

// wait returns the outcome of the check's run in flight, starting one if
// there is none, or errCheckTimeout when the run has not ended by its
// giveUp, or errProbeEnded when ctx ends first. A failure is logged to
// logger as "readiness check failed" by each probe that gives up on the
// run, or, when none did, by the run itself when it ends with an error
// or after its giveUp (its probes' callers had hung up first); a run
// that a probe gave up on logs the error it ends with as a follow-up.
func (c *readinessCheck) wait(ctx context.Context, timeout time.Duration, logger *slog.Logger) error {
	c.mu.Lock()
	run := c.run
	if run == nil {
		// The run outlives this probe if the check hangs; it keeps the
		// probe's context values, not its cancellation.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		deadline, _ := rctx.Deadline()
		run = &checkRun{done: make(chan struct{}), giveUp: deadline.Add(min(timeout/10, 100*time.Millisecond))}
		c.run = run
		go func() {
			defer cancel()
			start := time.Now()
			err := c.fn(rctx)
			late := time.Now().After(run.giveUp)
			c.mu.Lock()
			run.err, run.finished = err, true
			reported := run.reported
			c.mu.Unlock()
			// Logged before the next probe can start another run.
			defer func() {
				c.mu.Lock()
				c.run = nil
				c.mu.Unlock()
				close(run.done)
			}()
			switch {
			case err != nil && reported:
				logger.WarnContext(rctx, "m2mauth: readiness check that did not answer in time ended", "check", c.name, "error", err)
			case err != nil:
				logger.WarnContext(rctx, "m2mauth: readiness check failed", "check", c.name, "error", err)
			case late && !reported:
				logger.WarnContext(rctx, "m2mauth: readiness check failed", "check", c.name, "error", errCheckTimeout, "took", time.Since(start))
			}
		}()
	}
	c.mu.Unlock()
	t := time.NewTimer(time.Until(run.giveUp))
	defer t.Stop()
	select {
	case <-run.done:
		return run.err
	case <-t.C:
		c.mu.Lock()
		finished := run.finished
		run.reported = run.reported || !finished
		c.mu.Unlock()
		if finished {
			<-run.done
			return run.err
		}
		logger.WarnContext(ctx, "m2mauth: readiness check failed", "check", c.name, "error", errCheckTimeout)
		return errCheckTimeout
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errProbeEnded, ctx.Err())
	}
}
