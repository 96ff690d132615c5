# Install locald-admin onto a real system (see README, "Installing on a real
# system").  Honours DESTDIR (staging for packagers) and PREFIX.
#
#   make install [DESTDIR=/stage] [PREFIX=/usr]
#   make uninstall [DESTDIR=/stage] [PREFIX=/usr]
#
# Layout: the package goes into a private directory $(LIBDIR)/site, never
# into the system's dist-packages (Debian marks it externally managed), copied
# as the source lays it out (locald_admin/, with mechanism/ and client/ as its
# subpackages, as pyproject.toml's package-dir says): no pip, no network, no
# build metadata, nothing written into the source tree; its bytecode is
# compiled here (BYTECOMPILE=no leaves that to the packager).  The compiled
# extensions (locald_admin/fs/_cwalk.c, fs/_cprocscan.c, _cwire.c) are built
# straight into it with $(CC).  Three
# small launchers run it with Debian's python3 in isolated mode.  The
# activation file and the unit are rewritten to name the mechanism's real
# path.
#
# The package needs nothing beyond Python's standard library (it speaks
# D-Bus itself: locald_admin/wire.py and busio.py).
#
#   CWALK=no           do not build the compiled extensions, the walk, the
#                      scan of /proc and the reader of D-Bus values (their
#                      Python versions are used).

#
# Where systemd, the bus, polkitd and bash-completion look is asked of
# pkg-config (systemd.pc, dbus-1.pc, polkit-gobject-1.pc, bash-completion.pc)
# when PREFIX is /usr, the system's own
# prefix; the values below are the fallback (a .pc file missing, another
# PREFIX); any directory can be set on the command line (make install
# UNITDIR=...).  make print-dirs shows what is in force.

PREFIX     ?= /usr
PYTHON     ?= /usr/bin/python3
BYTECOMPILE ?= yes
PKG_CONFIG ?= pkg-config
ifeq ($(PREFIX),/usr)
pkgvar      = $(shell $(PKG_CONFIG) --variable=$(2) $(1) 2>/dev/null)
PC_UNITDIR := $(call pkgvar,systemd,systemdsystemunitdir)
PC_GENDIR  := $(call pkgvar,systemd,systemdsystemgeneratordir)
PC_CATALOGDIR := $(call pkgvar,systemd,catalogdir)
PC_DBUSDATA := $(call pkgvar,dbus-1,datadir)
PC_SERVICEDIR := $(call pkgvar,dbus-1,system_bus_services_dir)
PC_IFACEDIR := $(call pkgvar,dbus-1,interfaces_dir)
PC_ACTIONDIR := $(patsubst %/,%,$(call pkgvar,polkit-gobject-1,policydir))
PC_BASHCOMPDIR := $(call pkgvar,bash-completion,completionsdir)
endif
LIBDIR     ?= $(PREFIX)/lib/locald-admin
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share
UNITDIR    ?= $(or $(PC_UNITDIR),$(PREFIX)/lib/systemd/system)
GENDIR     ?= $(or $(PC_GENDIR),$(PREFIX)/lib/systemd/system-generators)
CATALOGDIR ?= $(or $(PC_CATALOGDIR),$(PREFIX)/lib/systemd/catalog)
DBUSCONFDIR ?= $(or $(PC_DBUSDATA),$(DATADIR))/dbus-1/system.d
DBUSSERVICEDIR ?= $(or $(PC_SERVICEDIR),$(DATADIR)/dbus-1/system-services)
DBUSIFACEDIR ?= $(or $(PC_IFACEDIR),$(DATADIR)/dbus-1/interfaces)
POLKITACTIONDIR ?= $(or $(PC_ACTIONDIR),$(DATADIR)/polkit-1/actions)
SYSCONFDIR ?= /etc
MANDIR     ?= $(DATADIR)/man
LOCALEDIR  ?= $(DATADIR)/locale
BASHCOMPDIR ?= $(or $(PC_BASHCOMPDIR),$(DATADIR)/bash-completion/completions)
ZSHCOMPDIR ?= $(DATADIR)/zsh/vendor-completions
CWALK      ?= yes
EXTENSIONS := fs/_cwalk fs/_cprocscan _cwire
CC         ?= cc
CFLAGS     ?= -O2 -g
CWALK_FLAGS := -std=gnu11 -Wall -Wextra -Werror=implicit -fPIC -shared
PY_INCLUDE  = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
EXT_SUFFIX  = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
SITE       := $(LIBDIR)/site

MECHANISM  := $(LIBDIR)/locald-admin-mechanism
BUSCONF    := $(DBUSCONFDIR)/org.locald.Admin1.conf
ACTIVATION := $(DBUSSERVICEDIR)/org.locald.Admin1.service
POLICY     := $(POLKITACTIONDIR)/org.locald.admin1.policy
UNIT       := $(UNITDIR)/locald-admin.service
SHIM       := $(BINDIR)/locald-shim
GENERATOR  := $(GENDIR)/locald-admin-generator
ADMINCONF  := $(SYSCONFDIR)/locald/admin.conf
IFACEXML   := $(DBUSIFACEDIR)/org.locald.Admin1.xml
MANPAGES   := $(MANDIR)/man1/locald-shim.1 $(MANDIR)/man8/locald-admin-mechanism.8 \
              $(MANDIR)/man5/locald-admin.conf.5 $(MANDIR)/man5/org.locald.Admin1.5
BASHCOMP   := $(BASHCOMPDIR)/locald-shim
ZSHCOMP    := $(ZSHCOMPDIR)/_locald-shim
# The headless polkit rule, as an example the administrator copies (never
# active by itself); polkit's refusals name it (mechanism/polkit.py).
EXAMPLERULE := $(DATADIR)/doc/locald-admin/examples/50-locald-admin.rules.example
# The journal catalog entry of the audit record (journalctl -x explains it).
CATALOG    := $(CATALOGDIR)/locald-admin.catalog
# The polkit action's translations: one .mo of the domain it declares
# (gettext-domain) for each po/<lang>.po present, compiled by msgfmt.
LANGUAGES  := $(patsubst po/%.po,%,$(wildcard po/*.po))
MOFILES    := $(foreach l,$(LANGUAGES),$(LOCALEDIR)/$(l)/LC_MESSAGES/locald-admin.mo)
MSGFMT     ?= msgfmt
JOURNALCTL ?= journalctl
INSTALLED  := $(BUSCONF) $(ACTIVATION) $(POLICY) $(UNIT) $(SHIM) $(GENERATOR) $(IFACEXML) $(MANPAGES) \
              $(BASHCOMP) $(ZSHCOMP) $(EXAMPLERULE) $(CATALOG) $(MOFILES)
# The package's modules, by where they go below $(SITE) (pyproject.toml's
# package-dir): locald_admin/** as is, mechanism/** and client/** below it.
PKG_FILES  := $(shell find locald_admin mechanism client -name '*.py' -o -name py.typed)

.PHONY: all install uninstall print-dirs demo test

# journalctl --update-catalog, when installing onto this system (no DESTDIR)
# and journalctl is there.
define update-catalog
	if [ -z '$(DESTDIR)' ] && command -v $(JOURNALCTL) >/dev/null; then $(JOURNALCTL) --update-catalog; fi
endef

all:
	@echo "targets: install, uninstall (DESTDIR=, PREFIX=), print-dirs, demo, test"

print-dirs:
	@$(foreach v,PREFIX LIBDIR BINDIR DATADIR UNITDIR GENDIR CATALOGDIR DBUSCONFDIR DBUSSERVICEDIR DBUSIFACEDIR \
		POLKITACTIONDIR SYSCONFDIR MANDIR LOCALEDIR BASHCOMPDIR ZSHCOMPDIR,echo '$(v)=$($(v))';)

demo:
	scripts/demo

test:
	scripts/test

# Every file and directory install makes has its mode from here, never from
# the caller's umask (root's may be 000, and the compiled walk and the
# launchers are code root runs): directories 755, programs 755, the rest 644.
# What is written without install -m (cc's output, sed's redirections, pip's
# tree) is written under umask 022, so no moment exists in which it is
# writable by others, and then given its mode.
install:
	rm -rf '$(DESTDIR)$(LIBDIR)'
	install -d -m 755 '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(dir $(BUSCONF))' \
		'$(DESTDIR)$(dir $(ACTIVATION))' '$(DESTDIR)$(dir $(POLICY))' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(GENDIR)'
	$(foreach f,$(PKG_FILES),install -D -m 644 '$(f)' \
		'$(DESTDIR)$(SITE)/$(patsubst mechanism/%,locald_admin/mechanism/%,$(patsubst client/%,locald_admin/client/%,$(f)))';)
	if [ '$(CWALK)' = yes ]; then umask 022; for ext in $(EXTENSIONS); do \
		$(CC) $(CPPFLAGS) $(CFLAGS) $(CWALK_FLAGS) -I'$(PY_INCLUDE)' locald_admin/$$ext.c $(LDFLAGS) \
			-o '$(DESTDIR)$(SITE)/locald_admin/'$$ext'$(EXT_SUFFIX)' && \
		chmod 644 '$(DESTDIR)$(SITE)/locald_admin/'$$ext'$(EXT_SUFFIX)' || exit 1; done; fi
	@# The bytecode, now: the launchers run with -B and write none (the
	@# Debian package leaves it to dh_python3, BYTECOMPILE=no).
	if [ '$(BYTECOMPILE)' = yes ]; then umask 022; \
		$(PYTHON) -m compileall -q -d '$(SITE)/locald_admin' '$(DESTDIR)$(SITE)/locald_admin' >/dev/null; fi
	umask 022; sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.mechanism.start|' \
		data/launcher/launcher.in > '$(DESTDIR)$(MECHANISM)'
	umask 022; sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.client.shim|' \
		data/launcher/launcher.in > '$(DESTDIR)$(LIBDIR)/locald-shim'
	umask 022; sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.mechanism.generator|' \
		data/launcher/launcher.in > '$(DESTDIR)$(LIBDIR)/locald-admin-generator'
	chmod 755 '$(DESTDIR)$(MECHANISM)' '$(DESTDIR)$(LIBDIR)/locald-shim' '$(DESTDIR)$(LIBDIR)/locald-admin-generator'
	ln -sfr '$(DESTDIR)$(LIBDIR)/locald-shim' '$(DESTDIR)$(SHIM)'
	ln -sfr '$(DESTDIR)$(LIBDIR)/locald-admin-generator' '$(DESTDIR)$(GENERATOR)'
	install -m 644 data/dbus-1/system.d/org.locald.Admin1.conf '$(DESTDIR)$(BUSCONF)'
	install -m 644 data/polkit-1/actions/org.locald.admin1.policy '$(DESTDIR)$(POLICY)'
	umask 022; sed -e 's|^Exec=/usr/bin/locald-admin-mechanism|Exec=$(MECHANISM)|' \
		data/dbus-1/system-services/org.locald.Admin1.service > '$(DESTDIR)$(ACTIVATION)'
	umask 022; sed -e 's|^ExecStart=/usr/bin/locald-admin-mechanism|ExecStart=$(MECHANISM)|' \
		data/systemd/locald-admin.service > '$(DESTDIR)$(UNIT)'
	chmod 644 '$(DESTDIR)$(ACTIVATION)' '$(DESTDIR)$(UNIT)'
	@# Made from the code by scripts/generate and committed (tests/test_generated.py).
	install -D -m 644 data/dbus-1/interfaces/org.locald.Admin1.xml '$(DESTDIR)$(IFACEXML)'
	$(foreach p,$(MANPAGES),install -D -m 644 data/man/$(notdir $(p)) '$(DESTDIR)$(p)';)
	install -D -m 644 data/completions/locald-shim.bash '$(DESTDIR)$(BASHCOMP)'
	install -D -m 644 data/completions/_locald-shim '$(DESTDIR)$(ZSHCOMP)'
	install -D -m 644 data/polkit-1/rules.d/50-locald-admin.rules.example '$(DESTDIR)$(EXAMPLERULE)'
	install -D -m 644 data/catalog/locald-admin.catalog '$(DESTDIR)$(CATALOG)'
	$(foreach l,$(LANGUAGES),install -d -m 755 '$(DESTDIR)$(LOCALEDIR)/$(l)/LC_MESSAGES' && \
		umask 022 && $(MSGFMT) --check -o '$(DESTDIR)$(LOCALEDIR)/$(l)/LC_MESSAGES/locald-admin.mo' po/$(l).po && \
		chmod 644 '$(DESTDIR)$(LOCALEDIR)/$(l)/LC_MESSAGES/locald-admin.mo' || exit 1;)
	@# The catalog database, on the system itself (a staged install: the
	@# package's trigger, or the administrator, runs journalctl --update-catalog).
	$(update-catalog)
	@# The commented defaults; an admin's own file is never overwritten.
	if [ ! -e '$(DESTDIR)$(ADMINCONF)' ]; then \
		install -D -m 644 data/locald/admin.conf '$(DESTDIR)$(ADMINCONF)'; fi
ifneq ($(PREFIX),/usr)
	@echo "note: the system bus and polkitd read only /usr/share and /etc. Link:"
	@echo "  $(BUSCONF) -> /etc/dbus-1/system.d/"
	@echo "  $(ACTIVATION) -> /usr/share/dbus-1/system-services/"
	@echo "  $(POLICY) -> /usr/share/polkit-1/actions/"
	@echo "  $(UNIT) -> /etc/systemd/system/"
endif

uninstall:
	rm -f $(foreach f,$(INSTALLED),'$(DESTDIR)$(f)')
	$(update-catalog)
	rm -rf '$(DESTDIR)$(LIBDIR)'
	@# The configuration goes only if the admin never changed it.
	if cmp -s data/locald/admin.conf '$(DESTDIR)$(ADMINCONF)'; then \
		rm -f '$(DESTDIR)$(ADMINCONF)'; rmdir '$(DESTDIR)$(dir $(ADMINCONF))' 2>/dev/null || true; fi
