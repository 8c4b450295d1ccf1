//go:build unix && !linux

package main

import "syscall"

// noCoreDumps sets RLIMIT_CORE to 0 where the system has it; see the Linux
// version.
func noCoreDumps() {
	_ = syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{Cur: 0, Max: 0})
}
