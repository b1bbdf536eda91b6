//go:build race

package sqlstore_test

// raceEnabled is true when the race detector is on; long loops shrink.
const raceEnabled = true
