package compiler

// ids hands out small, non-zero ids and reuses freed ones. An id freed
// during a transaction is reused only after settle, so one transaction
// never deletes and creates the same id.
type ids struct {
	taken   map[uint32]bool
	free    []uint32
	pending []uint32
	next_   uint32
}

func newIDs() ids { return ids{taken: map[uint32]bool{}, next_: 1} }

// next allocates an id.
func (x *ids) next() uint32 {
	for len(x.free) > 0 {
		id := x.free[len(x.free)-1]
		x.free = x.free[:len(x.free)-1]
		if !x.taken[id] {
			x.taken[id] = true
			return id
		}
	}
	for x.taken[x.next_] {
		x.next_++
	}
	id := x.next_
	x.next_++
	x.taken[id] = true
	return id
}

// reserve takes a given id (adopted from the kernel) if it is free.
func (x *ids) reserve(id uint32) bool {
	if id == 0 || x.taken[id] {
		return false
	}
	x.taken[id] = true
	return true
}

// release frees an id that was reserved but never bound to an object.
func (x *ids) release(id uint32) { x.drop(id) }

// drop frees an id; it becomes reusable after settle.
func (x *ids) drop(id uint32) {
	if id == 0 || !x.taken[id] {
		return
	}
	delete(x.taken, id)
	x.pending = append(x.pending, id)
}

// settle makes ids freed by the last transaction reusable.
func (x *ids) settle() {
	x.free = append(x.free, x.pending...)
	x.pending = x.pending[:0]
}
