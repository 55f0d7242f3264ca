// Package benchtab is what the benchmarks share to report: Markdown tables
// and medians with their confidence intervals.
package benchtab

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"
)

// MedianInterval is a distribution-free interval that holds the true
// median of what v samples with at least 95% confidence: the k-th smallest
// and k-th largest values, for the largest k with P(Binomial(n, 1/2) < k)
// <= 2.5%. ok is false below 6 values, where no such k exists.
func MedianInterval(v []float64) (lo, hi float64, ok bool) {
	n := len(v)
	// P(X = i) for X ~ Binomial(n, 1/2), summed from i = 0 upwards.
	p := math.Pow(0.5, float64(n))
	cum, k := 0.0, 0
	for i := 0; i < n; i++ {
		cum += p
		if cum > 0.025 {
			break
		}
		k = i + 1
		p = p * float64(n-i) / float64(i+1)
	}
	if k == 0 {
		return 0, 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[k-1], s[n-k], true
}

// Median is the median of v (0 for none).
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Table prints as Markdown with aligned columns: readable in a terminal,
// pasteable into a note. The first column is left-aligned, the rest right.
type Table struct {
	Header []string
	Rows   [][]string
}

func (t *Table) Print() {
	width := make([]int, len(t.Header))
	for _, r := range append([][]string{t.Header}, t.Rows...) {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				fmt.Fprintf(&b, " %s%s |", c, pad)
			} else {
				fmt.Fprintf(&b, " %s%s |", pad, c)
			}
		}
		fmt.Println(b.String())
	}
	line(t.Header)
	sep := make([]string, len(width))
	for i, w := range width {
		if i == 0 {
			sep[i] = strings.Repeat("-", w)
		} else {
			sep[i] = strings.Repeat("-", w-1) + ":"
		}
	}
	var b strings.Builder
	b.WriteString("|")
	for _, s := range sep {
		fmt.Fprintf(&b, " %s |", s)
	}
	fmt.Println(b.String())
	for _, r := range t.Rows {
		line(r)
	}
}
