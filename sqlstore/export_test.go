package sqlstore

// UsageQuery and AuditByClientQuery return statements of s, for tests that
// ask the database how it runs them.
func UsageQuery(s *Store) string         { return s.q.usage }
func AuditByClientQuery(s *Store) string { return s.q.auditByClient }

// ClientQuery returns the statement of Store.Client.
func ClientQuery(s *Store) string { return s.q.client }
