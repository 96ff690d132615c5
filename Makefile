# Install locald-admin onto a real system (see README, "Installing on a real
# system").  Honours DESTDIR (staging for packagers) and PREFIX.
#
#   make install [DESTDIR=/stage] [PREFIX=/usr]
#   make uninstall [DESTDIR=/stage] [PREFIX=/usr]
#
# Layout: the package and its one dependency (dbus-fast, at the version
# pinned in constraints.txt, as the compiled wheel for $(PYTHON)) go into a
# private directory $(LIBDIR)/site, never into the system's dist-packages
# (Debian marks it externally managed); two small launchers run them with
# Debian's python3 in isolated mode.  The activation file and the unit are
# rewritten to name the mechanism's real path.
#
#   DBUS_FAST=system   leave dbus-fast out of $(LIBDIR)/site: the launchers
#                      then import the distribution's (Debian 12:
#                      python3-dbus-fast, 1.84), which a package built this
#                      way must depend on.  The real-systemd tier installs so.

PREFIX     ?= /usr
PYTHON     ?= /usr/bin/python3
LIBDIR     ?= $(PREFIX)/lib/locald-admin
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share
UNITDIR    ?= $(PREFIX)/lib/systemd/system
GENDIR     ?= $(PREFIX)/lib/systemd/system-generators
SYSCONFDIR ?= /etc
MANDIR     ?= $(DATADIR)/man
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/vendor-completions
DBUS_FAST  ?= bundled

MECHANISM  := $(LIBDIR)/locald-admin-mechanism
BUSCONF    := $(DATADIR)/dbus-1/system.d/org.locald.Admin1.conf
ACTIVATION := $(DATADIR)/dbus-1/system-services/org.locald.Admin1.service
POLICY     := $(DATADIR)/polkit-1/actions/org.locald.admin1.policy
UNIT       := $(UNITDIR)/locald-admin.service
SHIM       := $(BINDIR)/locald-shim
GENERATOR  := $(GENDIR)/locald-admin-generator
ADMINCONF  := $(SYSCONFDIR)/locald/admin.conf
IFACEXML   := $(DATADIR)/dbus-1/interfaces/org.locald.Admin1.xml
MANPAGES   := $(MANDIR)/man1/locald-shim.1 $(MANDIR)/man8/locald-admin-mechanism.8 \
              $(MANDIR)/man5/locald-admin.conf.5 $(MANDIR)/man5/org.locald.Admin1.5
BASHCOMP   := $(BASHCOMPDIR)/locald-shim
ZSHCOMP    := $(ZSHCOMPDIR)/_locald-shim
INSTALLED  := $(BUSCONF) $(ACTIVATION) $(POLICY) $(UNIT) $(SHIM) $(GENERATOR) $(IFACEXML) $(MANPAGES) \
              $(BASHCOMP) $(ZSHCOMP)
# bundled: the pinned wheel only (never a source build, which could quietly be
# dbus-fast's slow pure-Python fallback); system: no dependency at all.
DEPS_ARGS  := $(if $(filter system,$(DBUS_FAST)),--no-deps,-c constraints.txt --only-binary dbus-fast)

.PHONY: all install uninstall demo test

all:
	@echo "targets: install, uninstall (DESTDIR=, PREFIX=), demo, test"

demo:
	scripts/demo

test:
	scripts/test

install:
	@case '$(DBUS_FAST)' in bundled|system) ;; *) echo "DBUS_FAST must be bundled or system" >&2; exit 1;; esac
	rm -rf '$(DESTDIR)$(LIBDIR)'
	install -d '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(dir $(BUSCONF))' \
		'$(DESTDIR)$(dir $(ACTIVATION))' '$(DESTDIR)$(dir $(POLICY))' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(GENDIR)'
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
		$(DEPS_ARGS) --target '$(DESTDIR)$(LIBDIR)/site' .
	rm -rf '$(DESTDIR)$(LIBDIR)/site/bin'
	sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.mechanism.start|' \
		data/launcher/launcher.in > '$(DESTDIR)$(MECHANISM)'
	sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.client.shim|' \
		data/launcher/launcher.in > '$(DESTDIR)$(LIBDIR)/locald-shim'
	sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@MODULE@|locald_admin.mechanism.generator|' \
		data/launcher/launcher.in > '$(DESTDIR)$(LIBDIR)/locald-admin-generator'
	chmod 755 '$(DESTDIR)$(MECHANISM)' '$(DESTDIR)$(LIBDIR)/locald-shim' '$(DESTDIR)$(LIBDIR)/locald-admin-generator'
	ln -sfr '$(DESTDIR)$(LIBDIR)/locald-shim' '$(DESTDIR)$(SHIM)'
	ln -sfr '$(DESTDIR)$(LIBDIR)/locald-admin-generator' '$(DESTDIR)$(GENERATOR)'
	install -m 644 data/dbus-1/system.d/org.locald.Admin1.conf '$(DESTDIR)$(BUSCONF)'
	install -m 644 data/polkit-1/actions/org.locald.admin1.policy '$(DESTDIR)$(POLICY)'
	sed -e 's|^Exec=/usr/bin/locald-admin-mechanism|Exec=$(MECHANISM)|' \
		data/dbus-1/system-services/org.locald.Admin1.service > '$(DESTDIR)$(ACTIVATION)'
	sed -e 's|^ExecStart=/usr/bin/locald-admin-mechanism|ExecStart=$(MECHANISM)|' \
		data/systemd/locald-admin.service > '$(DESTDIR)$(UNIT)'
	chmod 644 '$(DESTDIR)$(ACTIVATION)' '$(DESTDIR)$(UNIT)'
	@# Made from the code by scripts/generate and committed (tests/test_generated.py).
	install -D -m 644 data/dbus-1/interfaces/org.locald.Admin1.xml '$(DESTDIR)$(IFACEXML)'
	$(foreach p,$(MANPAGES),install -D -m 644 data/man/$(notdir $(p)) '$(DESTDIR)$(p)';)
	install -D -m 644 data/completions/locald-shim.bash '$(DESTDIR)$(BASHCOMP)'
	install -D -m 644 data/completions/_locald-shim '$(DESTDIR)$(ZSHCOMP)'
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
	rm -rf '$(DESTDIR)$(LIBDIR)'
	@# The configuration goes only if the admin never changed it.
	if cmp -s data/locald/admin.conf '$(DESTDIR)$(ADMINCONF)'; then \
		rm -f '$(DESTDIR)$(ADMINCONF)'; rmdir '$(DESTDIR)$(dir $(ADMINCONF))' 2>/dev/null || true; fi
