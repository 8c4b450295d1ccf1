package provider

// Secret input files: PIN files and KEK value files. Both are opened the
// same way and must pass the same checks before a byte is read.

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// ErrSecretFile: a KEK value file is unsafe or malformed.
var ErrSecretFile = errors.New("kek value file refused")

// ErrSecretTooLong: a secret (a PIN, a PIN file, a KEK value file) is
// longer than any valid one, and was refused before it reached the token.
// A PIN error or an ErrSecretFile error wraps it.
var ErrSecretTooLong = errors.New("secret too long")

// MaxPINLen is the longest PIN sent to C_Login. PKCS#11 tokens announce
// ulMaxPinLen in CK_TOKEN_INFO (v2.40 base §5.5.3); SoftHSM's is 255.
const MaxPINLen = 256

// maxSecretFile is the most read from a secret file: a PIN (and a line end)
// or a KEK value in hex fits many times.
const maxSecretFile = 4 << 10

// openSecretFile opens a secret file and checks it before reading:
//
//   - it is a regular file, or with pipeOK a pipe or FIFO (a PIN file
//     given as `--pin-file <(pass show hsm)`); a device (/dev/zero), a
//     directory or a socket is refused;
//   - it is not accessible to group or others (mode 0600 or 0400);
//   - it belongs to the effective user or to root. Root may own it: a
//     secret provisioned by root (systemd credentials, a configuration
//     management run) is as trusted as root is anyway, and the mode check
//     still keeps other users out. A file of another user is refused, as
//     that user can change it at will.
//
// A symbolic link is followed and the file it points to is judged: the
// checks run on the opened file (fstat), so nothing can be swapped between
// the check and the read. O_NONBLOCK keeps the open of a FIFO with no
// writer from hanging; reads still wait for data (see readSecret).
func openSecretFile(path string, pipeOK bool) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the caller's message already
		}
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	mode := st.Mode()
	switch {
	case mode.IsRegular(), pipeOK && mode&fs.ModeNamedPipe != 0:
	default:
		f.Close()
		return nil, nil, fmt.Errorf("not a regular file (%s)", fileKind(mode))
	}
	if mode.Perm()&0o077 != 0 {
		f.Close()
		return nil, nil, fmt.Errorf("accessible to group or others (mode %04o); chmod 600 it", mode.Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if uid := uint32(os.Geteuid()); sys.Uid != uid && sys.Uid != 0 {
			f.Close()
			return nil, nil, fmt.Errorf("owned by uid %d, not by this user (uid %d) or root", sys.Uid, uid)
		}
	}
	if mode.IsRegular() && st.Size() > maxSecretFile {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %d bytes", ErrSecretTooLong, st.Size())
	}
	return f, st, nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeCharDevice != 0, m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeNamedPipe != 0:
		return "a pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "type " + m.Type().String()
}

// readSecret reads at most maxSecretFile bytes of f until end of file, or
// with firstLine until the first line end (a pipe's writer may keep it
// open); more is ErrSecretTooLong. Reading a pipe ends when ctx does. The
// caller clears the result.
func readSecret(ctx context.Context, f *os.File, firstLine bool) ([]byte, error) {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			// A pipe opened O_NONBLOCK is in the poller, where a deadline
			// wakes a pending read; on a regular file it is a no-op.
			_ = f.SetReadDeadline(time.Unix(1, 0))
		})
		defer stop()
	}
	buf := make([]byte, maxSecretFile+1)
	n := 0
	for {
		m, err := f.Read(buf[n:])
		n += m
		switch {
		case n > maxSecretFile:
			clear(buf)
			return nil, fmt.Errorf("%w: more than %d bytes", ErrSecretTooLong, maxSecretFile)
		case firstLine && bytes.IndexByte(buf[n-m:n], '\n') >= 0:
			return buf[:n:n], nil
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return buf[:n:n], nil
		case errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
			clear(buf)
			return nil, ctx.Err()
		}
		clear(buf)
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, err
	}
}

func readSecretFile(path string) ([]byte, error) {
	f, _, err := openSecretFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSecretFile, path, err)
	}
	defer f.Close()
	buf, err := readSecret(context.Background(), f, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSecretFile, path, err)
	}
	defer clear(buf)
	switch len(buf) {
	case 16, 32:
		return bytes.Clone(buf), nil
	}
	text := bytes.TrimRight(buf, "\r\n")
	if l := len(text); l == 32 || l == 64 {
		out := make([]byte, l/2)
		if _, err := hex.Decode(out, text); err == nil {
			return out, nil
		}
		clear(out)
	}
	return nil, fmt.Errorf("%w: %s holds neither 16 or 32 raw bytes nor 32 or 64 hex digits", ErrSecretFile, path)
}
