package main

import "golang.org/x/sys/unix"

// noCoreDumps keeps PINs (and whatever else is in memory) out of core
// files: RLIMIT_CORE 0 stops the kernel writing one, and a non-dumpable
// process also refuses ptrace attaches by other processes of the same user
// and makes /proc/PID/mem unreadable to them (prctl(2), PR_SET_DUMPABLE).
// Best effort: a failure leaves the process as it was.
func noCoreDumps() {
	_ = unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0})
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}
