package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openUnnamed opens a file with no name in dir (O_TMPFILE, Linux 3.11+):
// if the process dies, even by SIGKILL, the kernel frees it and nothing is
// left in the directory. linkUnnamed gives it a name once it is complete.
// It is opened for reading too, so that a spool can be read back.
func openUnnamed(dir string, mode fs.FileMode) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), dir+"/(unnamed)"), nil
}

// procFD is the name of f in /proc, through which linkat can name it.
func procFD(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// canLinkUnnamed reports whether linkUnnamed will be able to name f: with
// /proc mounted, or else with AT_EMPTY_PATH, which needs
// CAP_DAC_READ_SEARCH (linkat(2)). Linux 6.10 and later also let the
// process that opened the file do it; asking for the capability keeps to
// what every kernel allows, at the price of a named temporary file where
// a new kernel would not have needed one.
func canLinkUnnamed(f *os.File) bool {
	if _, err := os.Stat(procFD(f)); err == nil {
		return true
	}
	return haveCap(unix.CAP_DAC_READ_SEARCH)
}

// haveCap reports whether capability c is in the effective set.
func haveCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// linkUnnamed links the unnamed file f into the file system as name, which
// must not exist: through /proc/self/fd, or, without /proc, with
// AT_EMPTY_PATH.
func linkUnnamed(f *os.File, name string) error {
	err := unix.Linkat(unix.AT_FDCWD, procFD(f), unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.ENOENT) {
		if _, serr := os.Stat("/proc/self"); serr != nil {
			err = unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, name, unix.AT_EMPTY_PATH)
		}
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	return nil
}
