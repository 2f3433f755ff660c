// The status page GET / serves: one self-contained HTML file (no external assets, so it works on an
// air-gapped node) that polls /status every second and draws each tier as a bar of its models.

#include "runtime/http_endpoint.hpp"

namespace mcache {

const std::string& status_page_html() {
  static const std::string page = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mcache status</title>
<style>
 body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
 h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:18px}
 .tier{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 14px;margin-bottom:14px}
 .tier h2{font-size:15px;margin:0 0 6px} .nums{color:#555;font-size:12px;margin-bottom:6px}
 .bar{display:flex;height:26px;border:1px solid #bbb;border-radius:4px;overflow:hidden;background:#e9e9e9}
 .seg{height:100%;border-right:1px solid #fff;box-sizing:border-box;overflow:hidden;white-space:nowrap;
      font-size:11px;color:#fff;padding:5px 3px}
 .resident{background:#3c9a5f}.partial{background:#8bbf4a}.pinned{background:#2f6fb5}
 .leased{background:#7b4fb0}.loading,.copying{background:#e08a2c}
 table{border-collapse:collapse;margin-top:8px;font-size:12px} td,th{padding:2px 10px 2px 0;text-align:left}
 .legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:-2px}
 .err{color:#b00}
</style></head><body>
<h1>mcache</h1><div class="sub" id="when">loading…</div>
<div class="legend">
 <span class="resident"></span>resident <span class="partial"></span>partly resident <span class="pinned"></span>pinned
 <span class="leased"></span>leased <span class="loading"></span>loading / copying <span style="background:#e9e9e9;border:1px solid #bbb"></span>free
</div>
<div id="tiers"></div>
<script>
function mib(b){return (b/1048576).toFixed(1)+' MiB'}
function esc(s){return String(s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
function kind(m,isRam){
  if(m.state==='loading'||m.state==='copying')return 'loading';
  if(m.holders.length)return isRam?'leased':'pinned';
  return m.state==='partial'?'partial':'resident';
}
function tier(t,isRam){
  const budget=Math.max(t.budget_bytes,1);
  let segs='',rows='';
  for(const m of t.models){
    const k=kind(m,isRam), w=100*m.bytes/budget;
    segs+=`<div class="seg ${k}" style="width:${w}%" title="${esc(m.model)}: ${k}, ${mib(m.bytes)}">${esc(m.model)}</div>`;
    const who=m.holders.map(h=>`held by ${esc(h.holder)} since ${h.held_s.toFixed(1)} s`).join('; ');
    rows+=`<tr><td class="model">${esc(m.model)}</td><td>${k}</td><td>${mib(m.bytes)}${m.bytes<m.model_bytes?' of '+mib(m.model_bytes):''}</td><td>${who}</td></tr>`;
  }
  const used=t.used_bytes, extra=isRam?`leased ${mib(t.leased_bytes)}`:`pinned ${mib(t.pinned_bytes)}, working ${mib(t.working_bytes)}`;
  return `<div class="tier" data-tier="${esc(t.name)}"><h2>${esc(t.name)}${t.torch_device&&t.torch_device!=='cpu'?' · '+esc(t.torch_device):''}</h2>
   <div class="nums">used ${mib(used)} of ${mib(t.budget_bytes)}; ${extra}; ${t.models.length} models; ${t.waiting} waiting; ${t.hits} hits, ${t.loads} loads, ${t.evictions} evictions</div>
   <div class="bar">${segs}</div><table>${rows}</table></div>`;
}
async function refresh(){
  try{
    const s=await (await fetch('/status',{cache:'no-store'})).json();
    let html=tier(s.ram,true);
    for(const d of s.devices)html+=tier(d,false);
    html+=tier(s.cpu,false);
    document.getElementById('tiers').innerHTML=html;
    document.getElementById('when').textContent=`${s.catalog_models} models in the catalog; updated ${new Date().toLocaleTimeString()}`;
  }catch(e){document.getElementById('when').innerHTML='<span class="err">cannot reach /status: '+esc(e)+'</span>'}
}
refresh();setInterval(refresh,1000);
</script></body></html>
)html";
  return page;
}

} // namespace mcache
