package benchtab

import (
	"math"
	"testing"
)

func TestMedianInterval(t *testing.T) {
	seq := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[n-1-i] = float64(i + 1) // reversed: the function sorts
		}
		return v
	}
	for _, c := range []struct {
		n      int
		lo, hi float64
		ok     bool
	}{
		// The order statistics of the standard sign-test interval.
		{5, 0, 0, false},
		{6, 1, 6, true},
		{9, 2, 8, true},
		{21, 6, 16, true},
	} {
		lo, hi, ok := MedianInterval(seq(c.n))
		if ok != c.ok || lo != c.lo || hi != c.hi {
			t.Errorf("n=%d: got %v-%v ok=%v, want %v-%v ok=%v", c.n, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
	// Its coverage: the tail left out on each side is at most 2.5%.
	for n := 6; n <= 40; n++ {
		lo, _, _ := MedianInterval(seq(n))
		k := int(lo)
		tail := 0.0
		for i := 0; i < k; i++ {
			tail += binom(n, i) * math.Pow(0.5, float64(n))
		}
		if tail > 0.025 {
			t.Errorf("n=%d: k=%d leaves %.4f below", n, k, tail)
		}
		if next := tail + binom(n, k)*math.Pow(0.5, float64(n)); next <= 0.025 {
			t.Errorf("n=%d: k=%d is not the largest (k+1 leaves %.4f)", n, k, next)
		}
	}
}

func binom(n, k int) float64 {
	r := 1.0
	for i := 0; i < k; i++ {
		r = r * float64(n-i) / float64(i+1)
	}
	return r
}
