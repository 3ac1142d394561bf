// The dashboard in a real headless Chromium, driven by playwright-core:
// `node dashboard.cjs <admin url> <token> <screenshot.png>`. A wrong token is
// refused, the handled rate moves while messages flow, the dead letter's
// reason is listed, and a click rolls the handler back to version 1. Prints
// what it saw as one JSON line; any step that does not happen fails it.
"use strict";
const { chromium } = require("playwright-core");

const [url, token, screenshot] = process.argv.slice(2);
const HANDLER = 'tr[data-handler="shop/versioned"]';

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const seen = { errors: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("pageerror", e => seen.errors.push(String(e)));
    // The wrong token's refusal is expected; any other error is not.
    page.on("console", m => {
      if (m.type() === "error" && !m.text().includes("status of 401")) seen.errors.push(m.text());
    });
    await page.goto(`${url}/dashboard`);

    await page.fill("#token", "not-the-token");
    await page.click("#connect");
    await page.waitForFunction(() => document.getElementById("status").textContent === "the admin token was refused");
    seen.refused = await page.textContent("#status");
    seen.rows_when_refused = await page.locator("#handlers tbody tr").count();

    await page.fill("#token", token);
    await page.click("#connect");
    await page.waitForSelector(HANDLER);
    seen.status = await page.textContent("#status");

    // Messages flow while the page polls: the handled rate goes above zero
    // and the totals keep changing.
    const totals = [];
    const rates = [];
    for (let i = 0; i < 40 && !(rates.some(r => r > 0) && new Set(totals).size >= 3); i++) {
      await page.waitForTimeout(500);
      totals.push(await page.textContent(`${HANDLER} td.totals`));
      rates.push(parseFloat(await page.textContent(`${HANDLER} td.handled .rate`)));
    }
    seen.totals = totals;
    seen.rates = rates;
    seen.sparkline_points = (await page.getAttribute(`${HANDLER} td.handled polyline`, "points")).split(" ").length;

    await page.waitForSelector("#dead-letters tbody tr");
    seen.dead_letter = {
      source: await page.textContent("#dead-letters tbody tr td.source"),
      reason: await page.textContent("#dead-letters tbody tr td.reason"),
    };

    seen.version_before = await page.textContent(`${HANDLER} td.version`);
    await page.click(`${HANDLER} details summary`);
    await page.click(`${HANDLER} button.rollback[data-version="1"]`);
    await page.waitForFunction(
      sel => document.querySelector(sel + " td.version").textContent === "v1",
      HANDLER,
    );
    seen.version_after = await page.textContent(`${HANDLER} td.version`);
    seen.message = await page.textContent("#message");
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
})().catch(e => {
  console.error(e);
  process.exit(1);
});
