package main

import "golang.org/x/sys/unix"

// echoOff turns the terminal's echo off, keeping line editing and ^C, as
// term.ReadPassword does (best effort: ReadPassword does it again).
func echoOff(fd int) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return
	}
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON | unix.ISIG
	t.Iflag |= unix.ICRNL
	_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
}
