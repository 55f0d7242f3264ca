package maps

// small is a tiny ordered set of key/value pairs. A service or backend owns a
// handful of entries per map, and a slice of them costs far less than a Go
// map when a node holds a hundred thousand of them.
type small[K comparable, V comparable] []pair[K, V]

type pair[K comparable, V comparable] struct {
	k K
	v V
}

func (s small[K, V]) get(k K) (V, bool) {
	for _, p := range s {
		if p.k == k {
			return p.v, true
		}
	}
	var zero V
	return zero, false
}

func (s small[K, V]) has(k K) bool {
	_, ok := s.get(k)
	return ok
}

// put sets k to v, replacing an existing pair.
func (s *small[K, V]) put(k K, v V) {
	for i, p := range *s {
		if p.k == k {
			(*s)[i].v = v
			return
		}
	}
	*s = append(*s, pair[K, V]{k, v})
}
