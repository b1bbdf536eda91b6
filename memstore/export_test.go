package memstore

// RevocationEntries returns how many revocation entries s holds in memory,
// dead ones included.
func RevocationEntries(s *Store) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.rev.clients) + len(s.rev.tokens)
}
