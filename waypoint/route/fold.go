package route

// Envoy's case-insensitive string matching (StringMatcherImpl with
// ignore_case: absl::EqualsIgnoreCase, StartsWithIgnoreCase,
// EndsWithIgnoreCase, and StrContains on absl::AsciiStrToLower) folds
// ASCII letters only. These helpers do the same without allocating: they
// run on every request a case-insensitive matcher sees.

// lowerASCII is c with an ASCII capital made small.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

// containsFoldASCII reports whether sub is in s, ASCII case ignored.
func containsFoldASCII(s, sub string) bool {
	n := len(sub)
	if n == 0 {
		return true
	}
	for i := 0; i+n <= len(s); i++ {
		if equalFoldASCII(s[i:i+n], sub) {
			return true
		}
	}
	return false
}

// equalFoldASCII reports whether a and b are equal, ASCII case ignored.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] != b[i] && lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}
