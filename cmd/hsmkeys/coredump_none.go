//go:build !unix

package main

// noCoreDumps: nothing to do where there is no RLIMIT_CORE.
func noCoreDumps() {}
