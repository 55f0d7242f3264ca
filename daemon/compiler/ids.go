package compiler

// ids hands out small, stable, non-zero ids per key and reuses freed ones.
// An id freed during a transaction is reused only after Settle, so one
// transaction never deletes and creates the same id.
type ids[K comparable] struct {
	byKey   map[K]uint32
	byID    map[uint32]K
	held    map[uint32]bool // taken by objects outside the key space
	free    []uint32
	pending []uint32
	next    uint32
}

func newIDs[K comparable]() ids[K] {
	return ids[K]{byKey: map[K]uint32{}, byID: map[uint32]K{}, held: map[uint32]bool{}, next: 1}
}

func (x *ids[K]) taken(id uint32) bool {
	_, ok := x.byID[id]
	return ok || x.held[id]
}

// get returns the key's id, allocating one if needed.
func (x *ids[K]) get(k K) uint32 {
	if id, ok := x.byKey[k]; ok {
		return id
	}
	var id uint32
	for len(x.free) > 0 && id == 0 {
		id = x.free[len(x.free)-1]
		x.free = x.free[:len(x.free)-1]
		if x.taken(id) {
			id = 0
		}
	}
	for id == 0 {
		if !x.taken(x.next) {
			id = x.next
		}
		x.next++
	}
	x.byKey[k] = id
	x.byID[id] = k
	return id
}

// lookup returns the key's id without allocating.
func (x *ids[K]) lookup(k K) (uint32, bool) {
	id, ok := x.byKey[k]
	return id, ok
}

// reserve binds k to a given id if neither is bound yet.
func (x *ids[K]) reserve(k K, id uint32) bool {
	if _, ok := x.byKey[k]; ok || id == 0 {
		return false
	}
	if _, ok := x.byID[id]; ok {
		return false
	}
	delete(x.held, id)
	x.byKey[k] = id
	x.byID[id] = k
	return true
}

// hold marks an id as taken by something outside the key space (an object
// a previous run left in the kernel) until release.
func (x *ids[K]) hold(id uint32) {
	if _, ok := x.byID[id]; !ok {
		x.held[id] = true
	}
}

// release frees a held id.
func (x *ids[K]) release(id uint32) {
	if x.held[id] {
		delete(x.held, id)
		x.pending = append(x.pending, id)
	}
}

// drop forgets a key; its id becomes reusable after settle.
func (x *ids[K]) drop(k K) {
	id, ok := x.byKey[k]
	if !ok {
		return
	}
	delete(x.byKey, k)
	delete(x.byID, id)
	x.pending = append(x.pending, id)
}

// settle makes ids freed by the last transaction reusable.
func (x *ids[K]) settle() {
	x.free = append(x.free, x.pending...)
	x.pending = x.pending[:0]
}
