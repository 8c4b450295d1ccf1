package provider

import (
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// ModuleInfo describes a PKCS#11 library, as its C_GetInfo reports it
// (PKCS#11 v2.40 base §5.4, CK_INFO).
type ModuleInfo struct {
	Path            string // the library's file, symbolic links resolved
	CryptokiVersion string // the PKCS#11 version it implements: "2.40"
	Manufacturer    string // manufacturerID: "SoftHSM"
	Description     string // libraryDescription: "Implementation of PKCS11"
	LibraryVersion  string // libraryVersion: "2.6"
}

// ModuleInfoOf loads cfg's module (Config.Module or the URI's module-path,
// initialised with cfg.InitArgs) and reports what it says about itself. No
// session is opened and no token is needed.
func ModuleInfoOf(cfg Config) (ModuleInfo, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return ModuleInfo{}, err
	}
	mod, err := p11.Load(cfg.Module, cfg.InitArgs)
	if err != nil {
		return ModuleInfo{}, mapErr(err)
	}
	defer mod.Release()
	in, err := mod.Info()
	if err != nil {
		return ModuleInfo{}, mapErr(err)
	}
	return ModuleInfo{
		Path:            mod.Path(),
		CryptokiVersion: fmt.Sprintf("%d.%d", in.CryptokiMajor, in.CryptokiMinor),
		Manufacturer:    in.Manufacturer,
		Description:     in.Description,
		LibraryVersion:  fmt.Sprintf("%d.%d", in.Major, in.Minor),
	}, nil
}
