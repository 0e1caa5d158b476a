#!/bin/busybox sh
# tracekit lab guest /init: mount the kernel filesystems, load the modules listed in /opt/modules/order
# (from the kernel's own package: virtio console, KVM; a failure prints a tk-guest-error line),
# run the scenario given on the kernel command line (tk.arch=, tk.scenario=) with the function
# probes attached (raw kprobe_events by tracekit.lab.guest_run, or with tk.recorder=bcc|tracefs the
# real `tracekit record` by tracekit.lab.guest_record), stream the result directory as a tar archive to the virtio port "tracekit.out",
# print "tk-done rc=N" on the console and power off. Any hang is the host's timeout to handle.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/bin:/usr/bin:/sbin:/usr/sbin PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/tracekit
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
for word in $(cat /proc/cmdline); do
  case "$word" in
    tk.arch=*) TK_ARCH="${word#tk.arch=}" ;;
    tk.scenario=*) TK_SCENARIO="${word#tk.scenario=}" ;;
    tk.recorder=*) TK_RECORDER="${word#tk.recorder=}" ;;
    tk.kvmargs=*) TK_KVMARGS="$(echo "${word#tk.kvmargs=}" | tr ',' ' ')" ;;
  esac
done
if [ -f /opt/modules/order ]; then
  for m in $(cat /opt/modules/order); do
    case "$m" in kvm) args="$TK_KVMARGS" ;; *) args="" ;; esac
    insmod "/opt/modules/$m.ko" $args 2>/tmp/insmod.err || \
      echo "tk-guest-error: insmod $m $args failed: $(tail -n 1 /tmp/insmod.err)"
  done
fi
echo "tk-booted arch=$TK_ARCH scenario=$TK_SCENARIO recorder=${TK_RECORDER:-raw} kernel=$(uname -r)"
out="$(mktemp -d)"   # the result directory, on the tmpfs mounted above
if [ -n "$TK_RECORDER" ]; then
  python3 -m tracekit.lab.guest_record "$TK_ARCH" "$TK_SCENARIO" "$TK_RECORDER" "$out"
else
  python3 -m tracekit.lab.guest_run "$TK_ARCH" "$TK_SCENARIO" "$out"
fi
rc=$?
dmesg > "$out/dmesg.txt"
port=""
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = "tracekit.out" ] && port="/dev/$(basename "$p")"
done
if [ -n "$port" ]; then
  tar -cf "$port" -C "$out" .
else
  echo "tk-guest-error: no virtio port named tracekit.out"
  rc=3
fi
sync
echo "tk-done rc=$rc"
poweroff -f
