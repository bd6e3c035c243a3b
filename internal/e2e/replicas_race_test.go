//go:build race

package e2e

// raceEnabled: this test binary has the race detector; the gateways the
// replica tests build get it too.
const raceEnabled = true
