//go:build race

package m2mauth_test

// raceEnabled is true when the race detector is on; long loops shrink.
const raceEnabled = true
