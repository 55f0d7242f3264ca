package mapsize

import (
	"maps"
	"testing"
)

func TestReserveKeepsEntries(t *testing.T) {
	m := map[int]string{1: "a", 2: "b"}
	if got := Reserve(m, 10); len(got) != 2 {
		t.Fatalf("small batch: %v", got)
	}
	got := Reserve(m, 5000)
	if !maps.Equal(got, m) {
		t.Fatalf("large batch lost entries: %v", got)
	}
	got[3] = "c"
	if _, ok := m[3]; ok {
		t.Fatal("Reserve handed back the same map for a large batch")
	}
}
