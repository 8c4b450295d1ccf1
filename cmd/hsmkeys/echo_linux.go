package main

import "golang.org/x/sys/unix"

// echoOff turns off the echo of the terminal fd and leaves the rest of its
// settings (canonical input, signals) as they are.
func echoOff(fd int) error {
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	tio.Lflag &^= unix.ECHO
	return unix.IoctlSetTermios(fd, unix.TCSETS, tio)
}
