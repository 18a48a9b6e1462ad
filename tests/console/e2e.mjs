// Drives the operator console in headless Chromium, one step per run (tests/console.rs checks
// what each step did through gRPC and the change log in between):
//   node tests/console/e2e.mjs <edit|viewer|rollback|experiment-start|experiment-verdict|browse|policy-rollback|catalog|catalog-rollback|models|models-rollback|optimizer-audit> <console url> <screenshot dir>
// Exits non-zero, saying why, when the page does not behave.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const [step, url, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("pageerror", (e) => { console.error("page error:", e.message); process.exitCode = 1; });
const shot = (name) => page.screenshot({ path: `${shots}/${step}-${name}.png`, fullPage: true });

async function login(user, password) {
  await page.goto(url);
  await page.fill("#login-user", user);
  await page.fill("#login-password", password);
  await page.click("#login-button");
}

/// The 1-based lines of the `[[rule]]` block whose name starts with `name`.
function ruleBlock(text, name) {
  const lines = text.split("\n");
  const at = lines.findIndex((l) => l.startsWith(`name = "${name}`));
  let start = at;
  while (start > 0 && lines[start] !== "[[rule]]") start--;
  let end = at + 1;
  while (end < lines.length && lines[end] !== "[[rule]]") end++;
  return [start + 1, end];
}

try {
  if (step === "edit") {
    // A wrong password is refused on the page.
    await login("ana", "not her password");
    await page.waitForSelector("#login-error.bad");
    assert.match(await page.textContent("#login-error"), /user or the password is wrong/);
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.waitForFunction(() => document.querySelector("#rules-editor").value.includes("[[rule]]"));
    const original = await page.inputValue("#rules-editor");

    // Care bundle for regular customers too — with a tier the shop does not have.
    const name = "battery or durability question";
    const bad = original
      .replace('tier = ["gold", "platinum"]', 'tier = ["regular", "gold", "platinum", "diamond"]')
      .replace('min_lifetime_value = "5000"', 'min_lifetime_value = "50"');
    assert.notEqual(bad, original, "the example rule is where the test expects it");
    await page.fill("#rules-editor", bad);
    await page.click("#rules-check");
    await page.waitForSelector("#rules-error.bad");
    const error = await page.textContent("#rules-error");
    assert.match(error, /unknown tier `diamond`/, error);
    const line = Number(/Line (\d+)/.exec(error)?.[1]);
    const [from, to] = ruleBlock(bad, name);
    assert.ok(line >= from && line <= to, `the error is at line ${line}, in the rule's lines ${from}–${to}`);
    assert.equal(await page.textContent("#bad-line"), String(line), "the gutter marks the line");
    await shot("1-error-in-place");

    // Saving it is refused the same way, and nothing changes.
    await page.click("#rules-save");
    await page.waitForSelector("#rules-error.bad");
    assert.match(await page.textContent("#rules-error"), /diamond/);
    assert.match(await page.textContent("#rules-version"), /version 1 live/);

    // Fixed, it goes live as version 2.
    await page.fill("#rules-editor", bad.replace(', "diamond"', ""));
    await page.fill("#rules-note", "care bundle for regular customers too");
    await page.click("#rules-save");
    await page.waitForSelector("#rules-status.ok");
    assert.match(await page.textContent("#rules-status"), /Version 2 is live/);
    assert.match(await page.textContent("#rules-version"), /version 2 live/);
    await shot("2-saved");
  } else if (step === "viewer") {
    await login("vic", "vic's long password");
    await page.waitForSelector("#whoami:has-text('vic · viewer')");
    assert.ok(await page.isDisabled("#rules-save"), "a viewer cannot press save");
    const status = await page.evaluate(async () => {
      const text = document.querySelector("#rules-editor").value;
      const r = await fetch("/api/files/rules", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ text }) });
      return [r.status, (await r.json()).error.message];
    });
    assert.equal(status[0], 403, "the API refuses a viewer's change too");
    assert.match(status[1], /viewer/);
    // A change sent as a form (what another site could make a browser send) is refused.
    const form = await page.evaluate(async () => (await fetch("/api/files/rules", { method: "POST", body: "text=x" })).status);
    assert.equal(form, 415);
    await shot("1-read-only");
  } else if (step === "rollback") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#versions tr[data-version='2'].current");
    await page.click("#versions tr[data-version='2'] button.diff");
    await page.waitForSelector("#diff-view:not([hidden])");
    const diff = await page.textContent("#diff-view");
    assert.match(diff, /\+tier = \["regular", "gold", "platinum"\]/, diff);
    assert.match(diff, /-tier = \["gold", "platinum"\]/, diff);
    page.once("dialog", (d) => d.accept());
    await page.click("#versions tr[data-version='1'] button.rollback");
    await page.waitForSelector("#rules-status.ok");
    assert.match(await page.textContent("#rules-status"), /Version 1 is live again \(as version 3\)/);
    await page.waitForSelector("#versions tr[data-version='3'].current");
    await shot("1-rolled-back");
    await page.click("#tab-audit");
    await page.waitForSelector("#audit tbody tr");
    const log = await page.textContent("#audit");
    for (const want of ["rules.rollback", "rules.save", "login_failed"]) assert.ok(log.includes(want), `${want} in the change log`);
    await shot("2-change-log");
  } else if (step === "experiment-start") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.click("#tab-experiments");
    await page.waitForSelector("#exp-form tbody tr:nth-child(2)");
    await page.fill("#exp-name", "care bundle for regular customers");
    const b = page.locator("#exp-form tbody tr").nth(1);
    await b.locator(".arm-rules").selectOption("2");
    // A weight of 0 is refused, naming the field.
    await b.locator(".arm-weight").fill("0");
    await page.click("#exp-start");
    await page.waitForSelector("#exp-form-error.bad");
    assert.match(await page.textContent("#exp-form-error"), /arms\[1\]\.weight/);
    await b.locator(".arm-weight").fill("1");
    // B words the care bundle its own way; a wording with no title is refused, naming it.
    await b.locator(".arm-wording-offer").selectOption("care_bundle");
    await page.click("#exp-start");
    await page.waitForFunction(() => /arms\[1\]\.wording\[0\]\.title_en/.test(document.querySelector("#exp-form-error").textContent));
    await b.locator(".arm-title-en").fill("Two worry-free years and a power bank, 329");
    await b.locator(".arm-title-zh").fill("两年无忧加充电宝，只要 329");
    await page.click("#exp-start");
    await page.waitForSelector("#exp-running:not([hidden])");
    assert.match(await page.textContent("#exp-title"), /care bundle for regular customers \(exp-1\)/);
    assert.match(await page.textContent("#exp-arms tr[data-arm='B'] .wording"), /care_bundle: “Two worry-free years/);
    await shot("1-started");
  } else if (step === "experiment-verdict") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.click("#tab-experiments");
    await page.waitForSelector("#exp-arms tbody tr[data-arm='B']");
    assert.match(await page.textContent("#exp-srm"), /split as the weights say \(sample-ratio check p = [0-9.]+\) and bought alike before it/);
    // A third of each arm's customers bought about once before (hash-split, so roughly alike).
    for (const arm of ["A", "B"]) {
      const before = Number(await page.textContent(`#exp-arms tr[data-arm='${arm}'] td.purchases-before`));
      assert.ok(before > 0.2 && before < 0.45, `arm ${arm}: ${before} purchases before per customer`);
    }
    const verdict = await page.textContent("#exp-verdict");
    assert.match(verdict, /B converts better than A/, verdict);
    // A third of the customers bought before the experiment and buy more in it: the comparison
    // is adjusted for that, and narrower for it.
    const adjusted = verdict.match(/adjusted for each customer's purchases in the 14 days before, as good as (\d+) % more customers/);
    assert.ok(adjusted && Number(adjusted[1]) >= 5, verdict);
    const api = await page.evaluate(async () => (await fetch("/api/experiments")).json());
    const b = api.running.results.arms.find((a) => a.arm === "B");
    assert.ok(b.conversion_vs_control.variance_reduction > 0.05, JSON.stringify(b.conversion_vs_control));
    console.log(verdict);
    const p = Number(await page.textContent("#exp-arms tr[data-arm='B'] td.p-value"));
    assert.ok(p < 0.05, `p = ${p}`);
    await shot("1-verdict");

    // The KPIs moved: the care bundle's purchases, by offer, in the table, the chart and the CSV.
    await page.click("#tab-kpis");
    await page.selectOption("#kpi-metric", "conversions");
    await page.selectOption("#kpi-group", "offer");
    await page.waitForSelector("#kpi-table tbody tr[data-key='care_bundle']");
    const cells = await page.$$eval("#kpi-table tbody tr[data-key='care_bundle'] td", (tds) => tds.map((t) => t.textContent));
    assert.ok(Number(cells[1]) > 100, `care bundle turns ${cells[1]}`);
    assert.ok(parseFloat(cells[7]) > 25, `care bundle conversion ${cells[7]}`);
    await page.waitForSelector("#kpi-chart polyline[data-key='care_bundle']");
    const csv = await page.evaluate(async () => (await fetch("/api/kpis.csv?group=arm&hours=1")).text());
    assert.match(csv.split("\n")[0], /^start_ms,group,key,turns,/);
    assert.match(csv, /exp-1\/B/);
    await shot("2-kpis");

    // Ship B: its rules become the live rules, and the experiment ends.
    await page.click("#tab-experiments");
    await page.waitForSelector("#exp-arms tbody tr[data-arm='B']");
    page.once("dialog", (d) => d.accept());
    await page.click("#exp-arms tr[data-arm='B'] button.ship");
    await page.waitForSelector("#exp-past tbody tr[data-id='exp-1']");
    assert.match(await page.textContent("#exp-past"), /shipped B/);
    assert.ok(await page.isHidden("#exp-running"));
    await shot("3-shipped");
  } else if (step === "browse") {
    await login("vic", "vic's long password");
    await page.waitForSelector("#whoami:has-text('vic · viewer')");
    await page.click("#tab-catalog");
    await page.waitForSelector("#offers tr[data-offer='care_bundle']");
    assert.match(await page.textContent("#offers tr[data-offer='care_bundle']"), /WAR-2Y \+ PB-10K together for 329\.00/);
    await page.fill("#product-search", "x1 phone");
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll("#products tbody tr")];
      return rows.length > 0 && rows.every((r) => r.textContent.includes("X1 phone"));
    });
    assert.ok(await page.$("#products tr[data-sku='X1-256']"), "the X1 phones are found");
    await shot("1-catalog");

    // The conversation whose id and text hold a phone number and an e-mail: masked everywhere.
    await page.click("#tab-conversations");
    const row = page.locator("#conversations tbody tr", { hasText: "call-[phone ****5678]" });
    await row.click();
    await page.waitForSelector("#conversation-turns tbody tr");
    const turns = await page.textContent("#conversation-turns");
    assert.match(turns, /\[phone \*\*\*\*5678\]/, turns);
    assert.match(turns, /\[email \*\*\*@example\.com\]/, turns);
    const html = await page.content();
    for (const secret of ["13812345678", "li.lei"]) assert.ok(!html.includes(secret), `${secret} is on the page`);
    await shot("2-conversation-masked");

    await page.click("#tab-policies");
    await page.waitForSelector("#policies tr[data-version='pol-2'].current");
    assert.ok(await page.isDisabled("#policies tr[data-version='pol-1'] button.rollback"), "a viewer cannot serve a version");
    await shot("3-policies");
  } else if (step === "policy-rollback") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.click("#tab-policies");
    await page.waitForSelector("#policies tr[data-version='pol-1'] button.rollback");
    page.once("dialog", (d) => d.accept());
    await page.click("#policies tr[data-version='pol-1'] button.rollback");
    await page.waitForSelector("#policy-status.ok");
    await page.waitForSelector("#policies tr[data-version='pol-1'].current");
    await shot("1-served");
  } else if (step === "catalog") {
    // The catalog in the same editor: a bad price is shown at its line; renaming an offer a rule
    // names is refused (the rules would no longer pass); a new bundle price goes live.
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.selectOption("#edit-file", "catalog");
    await page.waitForFunction(() => document.querySelector("#rules-editor").value.includes("[[offer]]"));
    const original = await page.inputValue("#rules-editor");
    const priceLine = original.split("\n").indexOf('price = "329.00"') + 1;
    assert.ok(priceLine > 0, "the care bundle's price is where the test expects it");
    await page.fill("#rules-editor", original.replace('price = "329.00"', 'price = "3x9.00"'));
    await page.click("#rules-check");
    await page.waitForSelector("#rules-error.bad");
    const error = await page.textContent("#rules-error");
    assert.match(error, new RegExp(`Line ${priceLine} `), error);
    assert.match(error, /price/, error);
    await shot("1-bad-price");
    await page.fill("#rules-editor", original.replace('id = "care_bundle"', 'id = "care_bundle_2"'));
    await page.click("#rules-save");
    await page.waitForFunction(() => /rules would no longer pass/.test(document.querySelector("#rules-error").textContent));
    assert.match(await page.textContent("#rules-error"), /care_bundle/);
    await page.fill("#rules-editor", original.replace('price = "329.00"', 'price = "299.00"'));
    await page.fill("#rules-note", "care bundle at 299 for the holidays");
    await page.click("#rules-save");
    await page.waitForSelector("#rules-status.ok");
    assert.match(await page.textContent("#rules-status"), /Version 3 is live/);
    await shot("2-saved");
  } else if (step === "catalog-rollback") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.selectOption("#edit-file", "catalog");
    // Version 2 is the shipped arm's wording, 3 the new price.
    await page.waitForSelector("#versions tr[data-version='3'].current");
    await page.click("#versions tr[data-version='2'] button.diff");
    await page.waitForSelector("#diff-view:not([hidden])");
    let diff = await page.textContent("#diff-view");
    assert.match(diff, /\+title_en = "Two worry-free years and a power bank, 329"/, diff);
    await page.click("#versions tr[data-version='3'] button.diff");
    await page.waitForFunction(() => document.querySelector("#diff-view").textContent.includes("299.00"));
    diff = await page.textContent("#diff-view");
    assert.match(diff, /-price = "329\.00"/, diff);
    assert.match(diff, /\+price = "299\.00"/, diff);
    page.once("dialog", (d) => d.accept());
    await page.click("#versions tr[data-version='1'] button.rollback");
    await page.waitForSelector("#versions tr[data-version='4'].current");
    await shot("1-rolled-back");
  } else if (step === "models") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.click("#tab-models");
    await page.waitForSelector("#models tr[data-version='shop-a'].current");
    // Heads that fail their checksum: refused, and shop-a keeps serving.
    page.once("dialog", (d) => d.accept());
    await page.click("#models tr[data-version='shop-broken'] button.serve");
    await page.waitForSelector("#model-status.bad");
    assert.match(await page.textContent("#model-status"), /^dir: \/.*heads\.safetensors: sha256 mismatch/);
    assert.ok(await page.$("#models tr[data-version='shop-a'].current"), "shop-a still serves");
    await shot("1-refused");
    page.once("dialog", (d) => d.accept());
    await page.click("#models tr[data-version='shop-b'] button.serve");
    await page.waitForSelector("#model-status.ok");
    assert.match(await page.textContent("#model-status"), /default shop-b is serving \(was shop-a/);
    await page.waitForSelector("#models tr[data-version='shop-b'].current");
    await shot("2-served");
  } else if (step === "models-rollback") {
    await login("ana", "ana's long password");
    await page.waitForSelector("#whoami:has-text('ana · editor')");
    await page.click("#tab-models");
    await page.waitForSelector("#models tr[data-version='shop-b'].current");
    page.once("dialog", (d) => d.accept());
    await page.click("#models tr[data-version='shop-a'] button.serve");
    await page.waitForSelector("#models tr[data-version='shop-a'].current");
  } else if (step === "optimizer-audit") {
    // The optimizer's trail under the policy versions: the candidate judged, its estimates and
    // verdict, what was pushed; the optimizer that does not answer is named, not fatal.
    await login("vic", "vic's long password");
    await page.waitForSelector("#whoami:has-text('vic · viewer')");
    await page.click("#tab-policies");
    await page.waitForSelector("#optimizer-audit tr[data-id='judged-v2']");
    assert.match(await page.textContent("#optimizer-audit tr[data-id='judged-v2']"), /passed: Dr of candidate/);
    assert.ok(await page.$("#optimizer-audit tr[data-id='pushed-v2']"), "the push is listed");
    assert.match(await page.textContent("#optimizers"), /not answering/);
    // What the page shows, for the test to compare with the optimizer's own answer.
    console.log(await page.textContent("#optimizers"));
    for (const tr of await page.$$("#optimizer-audit tbody tr")) console.log((await tr.getAttribute("data-id")) + ": " + (await tr.innerText()));
    await shot("1-optimizer-audit");
  } else {
    throw new Error(`unknown step ${step}`);
  }
} catch (e) {
  await shot("failed").catch(() => {});
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
