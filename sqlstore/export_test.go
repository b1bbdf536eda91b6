package sqlstore

// UsageQuery and AuditByClientQuery return statements of s, for tests that
// ask the database how it runs them.
func UsageQuery(s *Store) string         { return s.q.usage }
func AuditByClientQuery(s *Store) string { return s.q.auditByClient }

// ClientQuery returns the statement of Store.Client.
func ClientQuery(s *Store) string { return s.q.client }

// LimiterFastGrant returns the statement of the Limiter's fast path that
// grants an attempt.
func LimiterFastGrant(l *Limiter) string { return l.fastGrant.query }

// WithoutFastPaths makes l decide every attempt in transactions.
func WithoutFastPaths(l *Limiter) { l.fastGrant.query, l.fastGive.query = "", "" }
