//go:build !race

package e2e

// raceEnabled: this test binary has no race detector.
const raceEnabled = false
