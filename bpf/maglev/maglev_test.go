package maglev

import (
	"testing"
)

func ids(n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(100 + i*7)
	}
	return out
}

func TestTableIsBalancedAndComplete(t *testing.T) {
	const m = 4093
	for _, n := range []int{1, 2, 3, 10, 100} {
		table := Table(ids(n), m)
		if len(table) != m {
			t.Fatalf("n=%d: %d slots, want %d", n, len(table), m)
		}
		share := map[uint32]int{}
		for _, id := range table {
			if id == 0 {
				t.Fatalf("n=%d: empty slot", n)
			}
			share[id]++
		}
		if len(share) != n {
			t.Fatalf("n=%d: %d backends got slots", n, len(share))
		}
		// Maglev gives each backend ceil or floor of m/n slots.
		lo, hi := m/n, (m+n-1)/n
		for id, s := range share {
			if s < lo || s > hi {
				t.Errorf("n=%d: backend %d has %d slots, want %d..%d", n, id, s, lo, hi)
			}
		}
	}
}

func TestTableIgnoresOrder(t *testing.T) {
	a := Table([]uint32{5, 9, 1, 77}, 1021)
	b := Table([]uint32{77, 1, 9, 5}, 1021)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("slot %d differs: %d vs %d", i, a[i], b[i])
		}
	}
}

// Removing one of N backends must move its own slots and only a small share
// of the others (the paper reports a few percent beyond the ideal 1/N).
func TestRemovalDisruption(t *testing.T) {
	const m = 4093
	for _, n := range []int{5, 10, 50} {
		all := ids(n)
		before := Table(all, m)
		removed := all[n/2]
		after := Table(append(append([]uint32{}, all[:n/2]...), all[n/2+1:]...), m)
		moved := 0
		for i := range before {
			if before[i] != removed && before[i] != after[i] {
				moved++
			}
			if after[i] == removed {
				t.Fatalf("n=%d: removed backend still in the table", n)
			}
		}
		frac := float64(moved) / m
		t.Logf("n=%d: %.2f%% of the surviving backends' slots moved", n, 100*frac)
		if frac > 0.5/float64(n)+0.02 {
			t.Errorf("n=%d: %.2f%% of other slots moved, too many", n, 100*frac)
		}
	}
}

func TestEmpty(t *testing.T) {
	if Table(nil, 13) != nil {
		t.Fatal("table for no backends must be nil")
	}
}
