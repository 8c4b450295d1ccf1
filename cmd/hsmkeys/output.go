package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// output is where a command writes its result: stdout, or a temporary file
// in the target's directory that replaces the target only once complete
// and on disk (fsync, then rename, which is atomic within a directory). A
// failed or interrupted command aborts, and the target is as it was.
type output struct {
	io.Writer
	f       *os.File // the temporary file; nil for stdout
	unnamed bool     // f has no name yet (O_TMPFILE): nothing to remove
	target  string
	done    bool
	// check, if set, runs once the file is complete and on disk, right
	// before the rename; an error leaves the target as it was.
	check func() error
}

// createOutput opens the output for path ("" or "-": stdout). A new file
// gets mode; an existing one is replaced by a file of that mode too.
func (c *cli) createOutput(path string, mode fs.FileMode) (*output, error) {
	if path == "" || path == "-" {
		return &output{Writer: c.stdout}, nil
	}
	return createFile(path, mode)
}

// createFile opens a temporary file beside path that commit renames to it.
func createFile(path string, mode fs.FileMode) (*output, error) {
	target, err := checkTarget(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(target)
	// A file with no name first: a process killed mid-way (SIGKILL
	// included) leaves nothing behind. Where the file system cannot, or
	// where it could not be given a name at the end (no /proc and no
	// CAP_DAC_READ_SEARCH for AT_EMPTY_PATH), a named temporary file,
	// made with O_EXCL, that abort removes.
	if f, err := openUnnamed(dir, mode); err == nil {
		if !canLinkUnnamed(f) {
			f.Close()
		} else if err := f.Chmod(mode); err != nil { // the umask may have cut it
			f.Close()
			return nil, fmt.Errorf("output %s: %w", path, err)
		} else {
			return &output{Writer: f, f: f, unnamed: true, target: target}, nil
		}
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(target)+".hsmkeys-*.tmp")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the temporary name means nothing to the user
		}
		return nil, fmt.Errorf("output %s: cannot create a file in %s: %w", path, dir, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("output %s: %w", path, err)
	}
	return &output{Writer: f, f: f, target: target}, nil
}

// errOutputSymlink: the output path is a symbolic link.
var errOutputSymlink = errors.New("is a symbolic link; hsmkeys does not write through links")

// checkTarget refuses an output path that is a directory, not a regular
// file, or a symbolic link. A link is refused rather than followed: in a
// shared directory (/tmp, a drop box) another user can plant one that
// points at a file of ours, and following it would replace that file.
// Replacing the link itself would silently turn it into a file. The rename
// in commit never follows a link, so one planted after this check is
// replaced, not followed.
func checkTarget(path string) (string, error) {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return path, nil
	case err != nil:
		return "", err
	case st.Mode()&fs.ModeSymlink != 0:
		return "", withHint(fmt.Errorf("output %s %w", path, errOutputSymlink),
			"name the file the link points to, or remove the link")
	case st.IsDir():
		return "", fmt.Errorf("output %s is a directory", path)
	case !st.Mode().IsRegular():
		return "", fmt.Errorf("output %s is not a regular file", path)
	}
	return path, nil
}

// commit puts the output in place: sync, close, rename.
func (o *output) commit() error {
	if o.f == nil || o.done {
		return nil
	}
	o.done = true
	name := o.f.Name()
	err := o.f.Sync()
	if err == nil && o.unnamed {
		// Named only now, complete and on disk; the rename follows at once.
		name = filepath.Join(filepath.Dir(o.target), fmt.Sprintf(".%s.hsmkeys-%d-%d.tmp", filepath.Base(o.target), os.Getpid(), time.Now().UnixNano()))
		err = linkUnnamed(o.f, name)
		if err != nil {
			name = ""
		}
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	if err == nil && o.check != nil {
		err = o.check()
	}
	if err == nil {
		err = os.Rename(name, o.target)
	}
	if err != nil {
		if name != "" {
			os.Remove(name)
		}
		if errors.Is(err, errChanged) {
			return err
		}
		return fmt.Errorf("output %s: %w", o.target, err)
	}
	syncDir(filepath.Dir(o.target))
	return nil
}

// abort removes the temporary file unless commit ran. It is safe to defer.
func (o *output) abort() {
	if o == nil || o.f == nil || o.done {
		return
	}
	o.done = true
	o.f.Close()
	if !o.unnamed {
		os.Remove(o.f.Name())
	}
}

// syncDir makes a rename durable (best effort: not every file system can).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// refuseBinaryToTerminal stops DER from garbling a terminal.
func (c *cli) refuseBinaryToTerminal(path string, pem bool) error {
	if (path == "" || path == "-") && !pem && c.stdoutIsTerminal() {
		return &usageError{msg: "refusing to write binary DER to the terminal", hint: "write to a file with -o FILE, or ask for text with --pem"}
	}
	return nil
}

// dataToStdout refuses --json when the data itself goes to stdout: stdout
// holds one document.
func (c *cli) dataToStdout(fs *flags, path string) error {
	if c.json && (path == "" || path == "-") {
		return usagef(fs.spec.path, "--json needs -o FILE: the data goes to stdout otherwise")
	}
	return nil
}

// writeJSON sets the result of the --json document, written when the
// command ends (jsondoc.go), with its schema version and, on failure, the
// error.
func (c *cli) writeJSON(v any) error { return c.setResult(v) }
