// Package mapsize makes room in Go maps before a large batch of inserts.
package mapsize

import "maps"

// Reserve returns m, or a copy of m with room for n more entries when n
// is large and more than the map holds: a map grown one insert at a time
// through a snapshot of a hundred thousand objects rehashes, and touches
// fresh memory, at every doubling. A copy costs one pass over what m
// already holds.
func Reserve[K comparable, V any](m map[K]V, n int) map[K]V {
	if n < 1024 || n <= len(m) {
		return m
	}
	out := make(map[K]V, len(m)+n)
	maps.Copy(out, m)
	return out
}
