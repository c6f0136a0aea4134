// js-libp2p 3 uses Promise.withResolvers (ES2024, Node 22). Debian's Node 20 lacks it;
// this is the standard definition, installed only where missing.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
