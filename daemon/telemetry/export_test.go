package telemetry

// PendingDialled is how many client ends' dialled services wait for a
// server end (tests check that nothing is left behind).
func (t *Telemetry) PendingDialled() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.dialled)
}
