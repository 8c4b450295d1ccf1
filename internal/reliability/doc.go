// Package reliability holds the "faults survived" tests of hsmkeys: the
// public provider package driven through faultmod.so, a PKCS#11 module that
// wraps SoftHSM and injects the faults a real token shows (sessions closed
// under us, device errors, a session cap, a token that leaves its slot, a
// lost login, network latency).
//
// It is a package of its own so that its tests run in their own process:
// faultmod.so and SoftHSM share one C_Initialize per process, and the
// provider's own tests load SoftHSM directly. There is no code here besides
// the tests; run them with
//
//	go test -race -count=1 ./internal/reliability/
//
// They need SoftHSM 2 and gcc. Without them the tests skip, except when the
// CI environment variable is set, where a missing tool is a failure.
package reliability
