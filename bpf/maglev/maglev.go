// Package maglev builds Maglev consistent-hashing lookup tables (Eisenbud et
// al., NSDI 2016): every backend gets an almost equal share of the slots, and
// removing one of N backends moves only about 1/N of the slots.
package maglev

import (
	"slices"
)

// Table returns a lookup table of m slots (m must be prime and larger than
// the number of backends) filled with backend ids. Ids must be non-zero and
// distinct; the result depends only on the set, not on its order. With no
// backends it returns nil.
func Table(backends []uint32, m uint32) []uint32 {
	if len(backends) == 0 || m == 0 {
		return nil
	}
	ids := slices.Clone(backends)
	slices.Sort(ids)
	ids = slices.Compact(ids)

	n := len(ids)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	for i, id := range ids {
		offset[i] = mix64(uint64(id)^0x6a09e667f3bcc908) % uint64(m)
		skip[i] = mix64(uint64(id)^0xbb67ae8584caa73b)%uint64(m-1) + 1
	}

	table := make([]uint32, m)
	filled := uint32(0)
	for {
		for i := range n {
			// Walk backend i's permutation to its next free slot.
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[c] != 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = ids[i]
			next[i]++
			filled++
			if filled == m {
				return table
			}
		}
	}
}

// mix64 is the splitmix64 finaliser, the same one the BPF side uses to place
// clients on slots.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
