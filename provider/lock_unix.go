//go:build unix

package provider

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockKEKNames serialises KEK creation on one token among the processes of
// this user on this host, with flock(2) on a file in the user's cache
// directory named after the token's serial. SoftHSM's view of objects made
// by another process lags (measured: two 'kek create' at once both saw no
// rival), so the rival check of createVersion alone cannot keep versions
// unique there; the lock does, on one host. It returns the unlock function;
// without a cache directory it locks nothing and says so in the error. It
// waits for the lock until ctx ends.
func lockKEKNames(ctx context.Context, serial string) (func(), error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return func() {}, err
	}
	dir = filepath.Join(dir, "hsmkeys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return func() {}, err
	}
	name := filepath.Join(dir, fmt.Sprintf("kek-create-%x.lock", serial))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return func() {}, err
	}
	// Not a blocking flock: a wait for another kek create must end with
	// the caller's context (Ctrl-C).
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return func() {}, err
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return func() {}, ctx.Err()
		case <-t.C:
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
