#!/bin/sh
# udhcpc.sh — busybox udhcpc's event script in a moat VM guest: applies a lease to $interface
# (address/prefix, MTU from option 26, default route, /etc/resolv.conf from the DNS option).
# udhcpc sets: $1 = deconfig|bound|renew|leasefail|nak, $ip, $mask (prefix length), $router,
# $dns, $domain, $mtu.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-32}" dev "$interface"
    for r in $router; do
      ip route add default via "$r" dev "$interface" onlink
      break
    done
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
