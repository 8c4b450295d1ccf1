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
	target, err := resolveTarget(path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(target)
	// A file with no name first: a process killed mid-way (SIGKILL
	// included) leaves nothing behind. Where the file system cannot, a
	// named temporary file that abort removes.
	if f, err := openUnnamed(dir, mode); err == nil {
		if err := f.Chmod(mode); err != nil { // the umask may have cut it
			f.Close()
			return nil, fmt.Errorf("output %s: %w", path, err)
		}
		return &output{Writer: f, f: f, unnamed: true, target: target}, nil
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

// resolveTarget follows a symbolic link, so that the file it points to is
// replaced rather than the link, and refuses a directory.
func resolveTarget(path string) (string, error) {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return path, nil
	case err != nil:
		return "", err
	case st.Mode()&fs.ModeSymlink != 0:
		real, err := filepath.EvalSymlinks(path)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("output %s: a symbolic link to a missing file", path)
		}
		if err != nil {
			return "", err
		}
		return resolveTarget(real)
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
	if err == nil {
		err = os.Rename(name, o.target)
	}
	if err != nil {
		if name != "" {
			os.Remove(name)
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
