package store

// Every test in this package exports in pages of two keys, so that the
// conformance suite's snapshot case spans several queries.
func init() { exportPage = 2 }
