package provider

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Which module to load when the configuration names none, and what a
// bare module name (RFC 7512 §2.3 "module-name") stands for, follow p11-kit,
// which is how Debian and Fedora register PKCS#11 modules
// (https://p11-glue.github.io/p11-glue/p11-kit/manual/pkcs11-conf.html):
// a module is a file NAME.module in a configuration directory, whose
// "module:" line is the library, an absolute path or one relative to
// p11-kit's module directory. /etc/pkcs11/modules overrides
// /usr/share/p11-kit/modules for the same NAME. p11-kit's per-user
// directory (~/.config/pkcs11/modules) is not read: p11-kit itself ignores
// it for root, and a service should not depend on a user's files.

// These are variables so that tests can point them at a directory of their
// own; nothing else changes them.
var (
	p11kitConfigDirs = []string{"/etc/pkcs11/modules", "/usr/share/p11-kit/modules"}
	p11kitModuleDirs = libDirs("pkcs11")
	systemLibDirs    = libDirs("")
	p11kitProxyPaths = func() []string {
		var out []string
		for _, d := range libDirs("") {
			out = append(out, filepath.Join(d, "p11-kit-proxy.so"))
		}
		return out
	}()
)

// libDirs are the system library directories, multiarch first, with sub
// appended to each.
func libDirs(sub string) []string {
	var dirs []string
	if t := multiarch[runtime.GOARCH]; t != "" && runtime.GOOS == "linux" {
		dirs = append(dirs, "/usr/lib/"+t)
	}
	dirs = append(dirs, "/usr/lib64", "/usr/lib", "/usr/local/lib")
	for i := range dirs {
		dirs[i] = filepath.Join(dirs[i], sub)
	}
	return dirs
}

var multiarch = map[string]string{
	"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "386": "i386-linux-gnu",
	"arm": "arm-linux-gnueabihf", "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu",
	"riscv64": "riscv64-linux-gnu",
}

// RegisteredModule is a PKCS#11 module registered with p11-kit.
type RegisteredModule struct {
	Name   string // the configuration file's name without ".module"
	Path   string // the library, as an absolute path
	Config string // the configuration file
	// Present is false when the library the file names does not exist.
	Present bool
}

// RegisteredModules lists the modules registered with p11-kit in
// /etc/pkcs11/modules and /usr/share/p11-kit/modules, by name; a name in
// /etc overrides the same name in /usr/share. Files that name no module are
// left out.
func RegisteredModules() []RegisteredModule {
	byName := map[string]RegisteredModule{}
	for _, dir := range p11kitConfigDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), ".module")
			if !ok || name == "" || strings.HasPrefix(name, ".") {
				continue
			}
			if _, seen := byName[name]; seen {
				continue // an earlier directory overrides this one
			}
			file := filepath.Join(dir, e.Name())
			lib := moduleLine(file)
			if lib == "" {
				continue
			}
			r := RegisteredModule{Name: name, Path: lib, Config: file}
			if !filepath.IsAbs(lib) {
				r.Path = filepath.Join(p11kitModuleDirs[0], lib)
				for _, d := range p11kitModuleDirs {
					if exists(filepath.Join(d, lib)) {
						r.Path = filepath.Join(d, lib)
						break
					}
				}
			}
			r.Present = exists(r.Path)
			byName[name] = r
		}
	}
	out := make([]RegisteredModule, 0, len(byName))
	for _, r := range byName {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b RegisteredModule) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// moduleLine reads the "module:" setting of a p11-kit module file
// (pkcs11.conf(5): "key: value" lines, '#' comments). Files over 64 KiB are
// not module files and are skipped.
func moduleLine(file string) string {
	b, err := os.ReadFile(file)
	if err != nil || len(b) > 64<<10 {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "module" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// exists reports whether path is a regular file (after symlinks): a
// library dlopen can load.
func exists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// FindModule resolves a bare module name, as in an RFC 7512 "module-name"
// attribute ("softhsm2", "p11-kit-proxy", "opensc-pkcs11"), to a library
// path: first the module p11-kit registers under that name, then NAME.so or
// libNAME.so in p11-kit's module directory and in the system library
// directories. A name with a '/' is refused: a path belongs in module-path.
// It fails with ErrConfig, saying where it looked.
func FindModule(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("%w: module-name %q: want a bare name such as softhsm2 or p11-kit-proxy (a path goes in module-path)", ErrConfig, name)
	}
	for _, r := range RegisteredModules() {
		if r.Name == name {
			if !r.Present {
				return "", fmt.Errorf("%w: module-name %q: %s names %s, which does not exist", ErrConfig, name, r.Config, r.Path)
			}
			return r.Path, nil
		}
	}
	base := strings.TrimSuffix(name, ".so")
	dirs := append(slices.Clone(p11kitModuleDirs), systemLibDirs...)
	for _, d := range dirs {
		for _, f := range []string{base + ".so", "lib" + base + ".so"} {
			if p := filepath.Join(d, f); exists(p) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%w: module-name %q: no p11-kit module of that name in %s, and no %s.so or lib%s.so in %s",
		ErrConfig, name, strings.Join(p11kitConfigDirs, " or "), base, base, strings.Join(dirs, ", "))
}

// ErrNoModule: the configuration names no module and p11-kit's proxy is not
// installed. It is wrapped by a *NoModuleError.
var ErrNoModule = errors.New("no pkcs11 module configured")

// NoModuleError says that no module was configured and lists the modules
// p11-kit registers, to choose from. It matches ErrNoModule and ErrConfig.
type NoModuleError struct {
	Registered []RegisteredModule
}

func (e *NoModuleError) Error() string {
	var b strings.Builder
	b.WriteString("no pkcs11 module configured, and p11-kit's proxy (p11-kit-proxy.so) is not installed; set Config.Module, or module-path or module-name in the uri")
	if len(e.Registered) == 0 {
		fmt.Fprintf(&b, "; no module is registered in %s", strings.Join(p11kitConfigDirs, " or "))
		return b.String()
	}
	b.WriteString("; modules registered with p11-kit:")
	for i, r := range e.Registered {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s (%s)", r.Name, r.Path)
		if !r.Present {
			b.WriteString(" missing")
		}
	}
	return b.String()
}

func (e *NoModuleError) Is(target error) bool { return target == ErrNoModule || target == ErrConfig }

// DefaultModule is the module used when the configuration names none:
// p11-kit's proxy module, which offers the tokens of every module p11-kit
// registers (and only those), when it is installed. hsmkeys never picks a
// vendor module by itself: on a host with SoftHSM installed for tests, that
// would silently open the wrong token. Without the proxy it returns a
// *NoModuleError listing the registered modules.
func DefaultModule() (string, error) {
	for _, p := range p11kitProxyPaths {
		if exists(p) {
			return p, nil
		}
	}
	return "", &NoModuleError{Registered: RegisteredModules()}
}

// sameFile reports whether two module paths name one library.
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}
