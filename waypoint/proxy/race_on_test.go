//go:build race

package proxy

// raceEnabled: the race detector changes what escapes; allocation counts
// are not the release build's.
const raceEnabled = true
