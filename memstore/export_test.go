package memstore

// RevocationEntries returns how many revocation entries s holds in memory,
// dead ones included.
func RevocationEntries(s *Store) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.rev.clients) + len(s.rev.tokens)
}

// KeyClaims returns how many key event claims s holds in memory.
func KeyClaims(s *Store) int {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	return len(s.keys.claims)
}
