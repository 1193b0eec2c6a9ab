"""Synthetic shopper records for peftkit's five user-analysis questions; every row is marked ``synthetic``.

    from peftkit.data.synth import SYNTH_TASKS, synthesize
    frame = synthesize("churn", rows=2000, seed=0)  # the same (rows, seed) gives the same shoppers for every task

Generative model (equations and noise levels: docs/synthetic-data.md). Each user has four correlated standard-normal
latents: engagement e, affluence a, satisfaction s and purchase intent i. The behaviour fields are noisy functions
of them: Poisson orders, sessions and cart adds whose log-rates rise with e (with i and s only weakly), a log-normal
order value set by a, tenure and recency set by e. The three texts (a search query, a customer-service chat line, a
review snippet; Chinese or English) are drawn from phrase banks with three ordered levels, a slot's level being its
latent plus Gaussian noise cut at -0.5 and 0.5: the query shows i and a, the chat shows i and s, the review shows s
and a; greetings, fillers, empty slots and product nouns keep the texts diverse. Each label thresholds a noisy sum of
latents (conversion: a Bernoulli draw of a logistic probability) that leans on i or s, which the numbers barely
show, so text + fields beats fields alone, which beats chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from peftkit.errors import PeftkitError


@dataclass(frozen=True)
class SynthTask:
    """One synthetic question: its label, the columns to read, and what the label means."""

    name: str
    task: str  # peftkit task kind: "classification" | "ordinal" | "regression"
    label_column: str
    labels: (
        list[str] | None
    )  # in order (ordinal: low to high; binary: negative, positive); None for regression
    text_column: str  # the ready-made free text: query | chat | review
    template: str  # str.format over the row: the fields and the three texts, no label
    numeric_columns: list[str]  # the behaviour numbers a tabular baseline may use
    summary: str


NUMERIC = ["tenure_days", "recency_days", "frequency_90d", "monetary_90d", "sessions_30d", "cart_adds_30d"]
TEMPLATE = (
    "{platform}/{device}; tenure {tenure_days}d; last order {recency_days}d ago; orders 90d {frequency_90d}; "
    "spend 90d {monetary_90d}; sessions 30d {sessions_30d}; cart adds 30d {cart_adds_30d}; categories "
    "{category_mix} | search: {last_query|none} | chat: {chat|none} | review: {review|none}"
)
# fmt: off
_TASKS = [  # name, peftkit task kind, labels in order, what the label means for the business
    ("purchase_intent", "ordinal", ["weak", "medium", "strong"], "how close the shopper is to buying; when to push an offer"),
    ("purchasing_power", "ordinal", ["low", "mid", "high"], "the price tier the shopper can and will pay; which products and coupons to show"),
    ("purchasing_power_score", "regression", None, "purchasing power as a score in [0, 1], the score behind purchasing_power"),
    ("value_segment", "classification", ["browser", "interested", "buyer", "loyal_high_value"], "lifecycle value segment; who to invest marketing budget in"),
    ("churn", "classification", ["stay", "churn"], "the shopper stops buying in the next 90 days; who needs a retention offer"),
    ("conversion", "classification", ["no_convert", "convert"], "the current visit ends in an order; who to nudge now"),
]
# fmt: on
SYNTH_TASKS: dict[str, SynthTask] = {
    name: SynthTask(name, kind, name, labels, "text", TEMPLATE, list(NUMERIC), summary)
    for name, kind, labels, summary in _TASKS
}

# Latent correlation, order e, a, s, i.
CORR = np.array([[1, 0.3, 0.2, 0.3], [0.3, 1, 0, 0.15], [0.2, 0, 1, 0.1], [0.3, 0.15, 0.1, 1]])
# Text slots in phrase-bank order: the latent each one shows and the sd of the Gaussian noise added before the cut.
SLOTS = {"query_intent": ("i", 0.6), "tier": ("a", 0.7), "chat_intent": ("i", 0.7), "tone": ("s", 0.7)}
SLOTS |= {"review": ("s", 0.6), "price": ("a", 0.7)}
CUTS = [-0.5, 0.5]  # noisy latent -> phrase level 0 / 1 / 2
# Category -> how much affluence raises its share in a user's category mix.
TILT = {"electronics": 0.5, "fashion": 0.3, "home": 0.0, "beauty": 0.2, "grocery": -0.6, "sports": 0.0}
GREETING = {"en": "|||hi, |hello, |quick question: |hey, |btw ", "zh": "|||在吗，|你好，|亲，|请问|哈喽，"}
SUFFIX = {"en": "|||| 2024| gift| for mom| for dad| new model| for him| for her"}
SUFFIX["zh"] = "|||| 2024新款| 礼物| 送妈妈| 送爸爸| 新款| 送男友| 网红同款"
# Product nouns ("noun.lang.category") and phrase banks ("bank.lang.level", levels ordered by the latent, 0 = low).
# "{p}" is the product; empty options in the middle levels are neutral filler.
_PHRASES = """
noun.en.electronics = phone|earbuds|laptop|smartwatch|charger|tablet|camera|keyboard|power bank|monitor
noun.zh.electronics = 手机|耳机|笔记本电脑|智能手表|充电器|平板|相机|键盘|充电宝|显示器
noun.en.fashion = sneakers|dress|jacket|handbag|jeans|sunglasses|scarf|t-shirt|down coat|backpack
noun.zh.fashion = 运动鞋|连衣裙|外套|手提包|牛仔裤|太阳镜|围巾|T恤|羽绒服|双肩包
noun.en.home = air fryer|vacuum|bedding set|desk lamp|cushion|kettle|storage box|rice cooker|towel set|blender
noun.zh.home = 空气炸锅|吸尘器|四件套|台灯|靠垫|电水壶|收纳箱|电饭煲|毛巾套装|破壁机
noun.en.beauty = face cream|lipstick|sunscreen|perfume|shampoo|serum|face mask|eyeliner|cleanser|hair dryer
noun.zh.beauty = 面霜|口红|防晒霜|香水|洗发水|精华液|面膜|眼线笔|洗面奶|吹风机
noun.en.grocery = coffee beans|snacks|green tea|olive oil|instant noodles|nuts|milk powder|honey|rice|dried fruit
noun.zh.grocery = 咖啡豆|零食|绿茶|橄榄油|方便面|坚果|奶粉|蜂蜜|大米|果干
noun.en.sports = yoga mat|running shoes|dumbbells|bike helmet|tent|jump rope|gym bag|swim goggles|fitness band|hiking boots
noun.zh.sports = 瑜伽垫|跑鞋|哑铃|骑行头盔|帐篷|跳绳|健身包|泳镜|运动手环|登山鞋
query_intent.en.0 = how to choose a {p}|{p} ideas|{p} reviews|is a {p} worth it|{p} vs other brands|types of {p}|{p} unboxing|{p} pros and cons|what {p} do people like|{p} trends|{p} inspiration|{p} explained|{p} for beginners|do I need a {p}|{p} brands list|{p} buying guide|what is a good {p}|{p} video review|{p} forum|{p} top 10
query_intent.en.1 = {p} price|{p} deals|{p} discount|compare {p} prices|{p} on sale|{p} price drop|{p} best price|{p} bundle offer|{p} 2 for 1|{p} promo|{p} price history|{p} free shipping|{p} member price|{p} coupon|{p} flash sale|{p} cheapest seller|{p} black friday|{p} refurbished price|{p} installment price|{p} shipping cost
query_intent.en.2 = buy {p} now|{p} in stock|{p} coupon code checkout|{p} next day delivery|{p} in black|order {p} today|{p} add to cart|{p} same day shipping|{p} official store buy|{p} pay later|{p} pickup near me|{p} gift wrap order|{p} express order|reorder {p}|{p} buy 2|{p} delivery by tomorrow|{p} order tracking|{p} checkout|{p} size chart before ordering|{p} preorder deposit
query_intent.zh.0 = {p}怎么选|{p}推荐有哪些|{p}测评|{p}值得买吗|{p}对比|{p}种类|{p}开箱|{p}优缺点|大家都用什么{p}|{p}流行趋势|{p}灵感|{p}科普|新手{p}入门|需要买{p}吗|{p}品牌排行|{p}选购攻略|什么{p}好用|{p}视频测评|{p}小红书|{p}十大品牌
query_intent.zh.1 = {p}多少钱|{p}优惠|{p}打折|{p}比价|{p}特价|{p}降价了吗|{p}最低价|{p}套装优惠|{p}买一送一|{p}促销|{p}历史价格|{p}包邮|{p}会员价|{p}领券|{p}秒杀|{p}哪家便宜|{p}双十一价格|{p}翻新机价格|{p}分期价格|{p}运费
query_intent.zh.2 = {p}立即购买|{p}现货|{p}优惠券下单|{p}次日达|{p}黑色|今天下单{p}|{p}加入购物车|{p}当日发货|{p}官方旗舰店购买|{p}先用后付|{p}附近自提|{p}礼盒下单|{p}顺丰加急|回购{p}|{p}拍两件|{p}明天送达|{p}订单物流|{p}结算|{p}尺码表下单|{p}预售定金
tier.en.0 = cheap|budget|affordable|second-hand|basic|student|under 20 dollar|clearance|discount|entry-level
tier.en.1 = |||good value|mid-range|popular|reliable|classic|everyday|standard
tier.en.2 = premium|luxury|flagship|designer|pro|high-end|limited edition|imported|top-tier|signature
tier.zh.0 = 便宜|平价|学生党|百元内|二手|入门款|清仓|9块9|特价|白菜价
tier.zh.1 = |||口碑好|中端|热门|靠谱|经典款|日常|标准版
tier.zh.2 = 高端|奢侈|旗舰|大牌|专业级|高配|限量版|进口|顶配|联名款
chat_intent.en.0 = just browsing, do you have a catalogue?|what's the difference between these {p} models?|can you tell me more about the {p}?|is the {p} coming in new colours?|do you ship to my area at all?|what brands of {p} do you carry?|can I get alerts for new {p}?|how long is the {p} warranty usually?|are you a physical shop too?|what's popular in {p} right now?|when is your next big sale?|is this {p} good for beginners?|what material is the {p}?|is there a video of the {p}?|do you plan to stock more {p}?|how does the {p} compare to last year's?|would the {p} make a good gift?|where is the {p} made?
chat_intent.en.1 = is there a discount on the {p} this week?|can I get a price match on the {p}?|does the {p} come with free shipping?|can I return the {p} if it doesn't fit?|will the {p} go on sale soon?|is the bundle cheaper than the {p} alone?|can I use two coupons on the {p}?|how much is shipping for a {p}?|do members get a better price on the {p}?|is the {p} price the same in the app?|can I pay for the {p} in installments?|which {p} would you recommend under 200?|is the {p} cheaper during the festival sale?|do you have a student discount on the {p}?|can you hold the {p} price until payday?|is the {p} cheaper in the bigger pack?|does the {p} price include tax?|any trade-in deal for the {p}?
chat_intent.en.2 = I want to order the {p} today, is it in stock?|can the {p} arrive by friday if I pay now?|the {p} is in my cart but the coupon fails at checkout.|please reserve the {p} in black, paying now.|how do I change the address on my {p} order?|I'll take two {p}, can you combine shipping?|payment failed for the {p}, can you help me finish?|is express delivery available for the {p} I'm buying?|can I pick up the {p} today after paying?|add gift wrap to my {p} order please.|ready to buy the {p}, does the size run true?|confirm the {p} ships today and I'll check out.|just paid for the {p}, when does it ship?|can I add a second {p} to the order I just placed?|I need the {p} invoice for the order I'm placing.|my card got declined buying the {p}, other options?|placing the {p} order now, which courier?|can you apply the member price to my {p} order?
chat_intent.zh.0 = 随便看看，有新品目录吗？|这几款{p}有什么区别？|能介绍一下这个{p}吗？|{p}会出新颜色吗？|你们发货到我这边吗？|你们家有哪些牌子的{p}？|{p}有上新通知吗？|{p}保修一般多久？|你们有实体店吗？|最近什么{p}比较火？|下次大促是什么时候？|这个{p}适合新手吗？|{p}是什么材质的？|{p}有视频介绍吗？|{p}还会补货吗？|{p}和去年的款比怎么样？|{p}适合送人吗？|{p}是哪里产的？
chat_intent.zh.1 = 这个{p}这周有优惠吗？|{p}能保价吗？|{p}包邮吗？|{p}不合适可以退吗？|{p}最近会降价吗？|套装比单买{p}便宜吗？|{p}可以叠加两张券吗？|{p}运费多少？|会员买{p}有折扣吗？|App里{p}价格一样吗？|{p}支持分期吗？|两百以内推荐哪款{p}？|{p}大促会更便宜吗？|{p}有学生优惠吗？|{p}能等发工资再按这个价吗？|{p}大包装更划算吗？|{p}价格含税吗？|{p}有以旧换新吗？
chat_intent.zh.2 = 今天想下单{p}，有现货吗？|现在付款{p}周五能到吗？|{p}在购物车里了，结算时优惠券用不了。|{p}黑色帮我留一件，马上付款。|我的{p}订单怎么改收货地址？|{p}我要两件，能合并发货吗？|{p}付款失败了，帮我看看。|我买的{p}能发顺丰吗？|付完款{p}今天能自提吗？|{p}订单帮我加个礼盒包装。|准备买{p}了，尺码标准吗？|确认{p}今天发货我就下单。|刚付了{p}的款，什么时候发？|刚下的{p}订单能再加一件吗？|我要下单{p}，能开发票吗？|买{p}银行卡被拒了，还能怎么付？|马上下单{p}，发什么快递？|我的{p}订单能用会员价吗？
tone.en.0 = honestly your service has been terrible lately.|my last order arrived broken, still no refund.|I'm fed up with the delays.|third time I'm complaining about this.|nobody answered my last two messages.|thinking of shopping elsewhere tbh.|your app keeps logging me out, annoying.|last parcel was lost and nobody cares.|your refunds take forever.|very disappointed with the last few orders.|the courier was rude again.|I want to close my account.
tone.en.1 = |||thanks.|ok.|no rush.|let me know.|cheers.|thx|regards.|got it.|sure.
tone.en.2 = you guys are always so helpful!|love shopping here, thanks!|great service as always.|my last order was perfect, thank you!|I recommend you to all my friends.|fast reply as usual, appreciate it!|best shop on the app, honestly.|thanks again for last time's quick refund!|you never disappoint.|happy customer for years now!|your packaging is always lovely.|the courier was super friendly last time.
tone.zh.0 = 说实话你们最近服务太差了。|上次的货到了就坏，到现在没退款。|发货一直拖，受够了。|这是我第三次投诉了。|前两条消息都没人回。|真的想换一家买了。|App老是掉线，好烦。|上个包裹丢了也没人管。|退款太慢了。|最近几单都很失望。|快递员态度又很差。|我想注销账号了。
tone.zh.1 = |||谢谢。|好的。|不急。|麻烦了。|辛苦啦。|嗯嗯|等你回复。|收到。|行。
tone.zh.2 = 你们客服一直很贴心！|很喜欢在你们家买，谢谢！|服务还是那么好。|上次的订单很完美，谢谢！|已经推荐给朋友了。|回复还是这么快，点赞！|你们家是我最喜欢的店。|上次退款很快，再次感谢！|从来没让我失望过。|老顾客了，一直很满意！|包装每次都很用心。|上次快递小哥很热情。
review.en.0 = broke after a week|not as described|terrible quality, returning it|arrived damaged and support ignored me|cheap plastic feel, disappointed|stopped working, never again|smells weird and fell apart|wrong size sent twice|worst purchase this year|1 star, packaging crushed|battery dies in hours|colour faded after one wash|looks used, not new|missing parts, refund pending|seller never replied|waste of money
review.en.1 = it's okay|does the job|average, nothing special|as expected|decent but shipping was slow|works, instructions unclear|not bad, not great|3 stars, acceptable|ok quality, box was dented|alright, might return|usable, a bit noisy|fine I guess|same as in the photos|took a while to arrive, fine|nothing to complain about, nothing to praise|normal
review.en.2 = love it|excellent quality|exceeded my expectations|perfect, will buy again|5 stars, super fast delivery|best {p} I've owned|great fit and feels solid|works perfectly, highly recommend|my family loves it|beautifully made|amazing, buying another|flawless, arrived early|even better than the photos|customer service was wonderful|already recommended it to friends|a real upgrade
review.zh.0 = 用了一周就坏了|和描述不符|质量太差，退货|到货就坏了客服不理|做工粗糙，很失望|不能用了，再也不买|有异味，开胶了|两次都发错尺码|今年最差的一次购物|一星，包装压坏了|电池几个小时就没电|洗一次就掉色|像是二手的|少配件，退款还没到|卖家一直不回|浪费钱
review.zh.1 = 还行吧|能用|一般般，没什么特别|和预期差不多|还可以就是物流慢|能用，说明书看不懂|不好不坏|三星，凑合|质量还行，盒子有点压|一般，可能会退|能用，有点吵|凑合用吧|和图片一样|到得有点慢，还行|没什么好说的|普通
review.zh.2 = 非常喜欢|质量超好|超出预期|完美，会回购|五星，物流超快|用过最好的{p}|很合身，质感好|好用，强烈推荐|家里人都喜欢|做工精致|太棒了，再买一个|完美，提前到了|比图片还好看|客服特别好|已经推荐给朋友了|升级很明显
price.en.0 = waited for the sale|too pricey without a coupon|only bought it discounted|glad it was cheap|would not pay full price|stacked three coupons|bought the cheapest version|price was the main reason
price.en.1 = |||price is fair|reasonable price|priced about right
price.en.2 = worth the premium price|quality like this is worth paying for|bought the top version|paid extra for express, worth it|got the deluxe edition|splurged on this one|price doesn't matter for this quality|bought the collector's set
price.zh.0 = 等大促才买的|不用券有点贵|打折才入手|便宜就好|原价不会买|叠了三张券|买的最便宜的版本|主要图便宜
price.zh.1 = |||价格合理|价格还行|价格适中
price.zh.2 = 贵有贵的道理|为了质量多花钱值得|买了顶配|加钱发顺丰值得|入了豪华版|犒劳自己买的|这个品质不在乎价格|买了收藏版
"""


def _banks() -> tuple[dict[str, list[list[str]]], dict[str, dict[str, list[list[str]]]]]:
    """NOUNS[lang][category] and BANKS[bank][lang][level], each a list of options, from _PHRASES."""
    nouns: dict[str, dict[str, list[str]]] = {"en": {}, "zh": {}}
    banks: dict[str, dict[str, list[list[str]]]] = {}
    for line in _PHRASES.strip().splitlines():
        key, _, options = line.partition(" = ")
        bank, lang, level = key.split(".")
        if bank == "noun":
            nouns[lang][level] = options.split("|")
        else:
            banks.setdefault(bank, {}).setdefault(lang, []).append(options.split("|"))
    return {lang: [by_cat[c] for c in TILT] for lang, by_cat in nouns.items()}, banks


NOUNS, BANKS = _banks()


def _text(lang: str, levels: np.ndarray, u: np.ndarray, cats: list[int]) -> tuple[str, str, str]:
    """One user's (query, chat, review): `levels` per slot in SLOTS order, `u` 11 uniforms, `cats` one per text."""

    def pick(options: list[str] | str, x: float) -> str:
        options = options.split("|") if isinstance(options, str) else options
        return options[int(x * len(options))]

    q_int, tier, c_int, tone, rev, price = (BANKS[b][lang][lv] for b, lv in zip(SLOTS, levels))
    noun = [pick(NOUNS[lang][c], x) for c, x in zip(cats, u[:3])]
    sep = " " if lang == "en" else ""
    query = pick(q_int, u[3]).format(p=(pick(tier, u[4]) + sep + noun[0]).strip()) + pick(SUFFIX[lang], u[5])
    chat = pick(GREETING[lang], u[6]) + pick(c_int, u[7]).format(p=noun[1]) + sep + pick(tone, u[8])
    said, paid = pick(rev, u[9]).format(p=noun[2]), pick(price, u[10])
    if lang == "en":
        review = f"{noun[2]}: {said}" + (f", {paid}." if paid else ".")
    else:
        review = f"{noun[2]}{said}" + (f"，{paid}。" if paid else "。")
    return query, chat.strip(), review


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def synthesize(task: str, rows: int, seed: int) -> pd.DataFrame:
    """`rows` synthetic shoppers labelled for `task` (a key of SYNTH_TASKS).

    Every random draw is made whatever the task, so one (rows, seed) gives the same shoppers, fields and texts for
    every task (only the label column differs) and one (task, rows, seed) gives an identical frame.

    Raises:
        PeftkitError: an unknown task, rows not a whole number >= 1, or seed not a whole number >= 0.
    """
    _check_request(task, rows, seed)
    # The helpers draw from one generator in a fixed order; reordering the calls would change every frame.
    n, rng = int(rows), np.random.default_rng(seed)
    latent = rng.standard_normal((n, 4)) @ np.linalg.cholesky(CORR).T
    behaviour = _behaviour(rng, latent)
    who, u = _who(rng, latent)
    top3, kinds, shares = _categories(rng, latent[:, 1], u[:, 4])
    texts = _texts(rng, latent, who["lang"], top3, kinds, shares)
    frame = pd.DataFrame(
        {
            "user_id": [f"synth-{r:06d}" for r in range(n)],
            "synthetic": np.ones(n, dtype=bool),
            **who,
            **behaviour,
            **texts,
            "text": [
                f"{q} | {c} | {v}" for q, c, v in zip(texts["last_query"], texts["chat"], texts["review"])
            ],
        }
    )
    index, power, convert_prob = _labels(rng, latent, u[:, 5])
    spec = SYNTH_TASKS[task]
    if task == "purchasing_power_score":
        frame[spec.label_column] = np.round(power, 4)
    else:
        frame[spec.label_column] = np.asarray(spec.labels, dtype=object)[index[task]]
    if task == "conversion":
        frame.insert(len(frame.columns) - 1, "true_conversion_prob", np.round(convert_prob, 4))
    return frame


def _check_request(task: str, rows: int, seed: int) -> None:
    """Fail on an unknown task, or rows/seed that are not whole numbers in range (bools are refused)."""
    if task not in SYNTH_TASKS:
        raise PeftkitError(f"unknown synthetic task {task!r}; known tasks: {', '.join(SYNTH_TASKS)}")
    for name, value, low in (("rows", rows, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise PeftkitError(f"synthesize: {name} must be a whole number >= {low}, got {value!r}")


def _behaviour(rng: np.random.Generator, latent: np.ndarray) -> dict[str, np.ndarray]:
    """The behaviour fields (tenure, recency, orders, spend, sessions, cart adds), by column name."""
    e, a, s, i = latent.T
    n = len(latent)
    eps = rng.standard_normal((n, 8))
    tenure = np.clip(np.round(np.exp(5.6 + 0.5 * e + 0.8 * eps[:, 0])), 1, 3650)
    freq = rng.poisson(np.exp(0.1 + 0.7 * e + 0.15 * s + 0.15 * i + 0.4 * eps[:, 1]))
    spend = np.round(freq * np.exp(4.0 + 0.45 * a + 0.5 * eps[:, 2] + 0.15 * eps[:, 3]), 2)
    sessions = rng.poisson(np.exp(1.7 + 0.6 * e + 0.2 * i + 0.35 * eps[:, 4]))
    carts = rng.poisson(np.exp(-0.2 + 0.4 * e + 0.3 * i + 0.1 * a + 0.4 * eps[:, 5]))
    recent = np.minimum(np.exp(2.6 - 0.4 * e - 0.2 * i + 0.6 * eps[:, 6]), 89)  # an order in the last 90 days
    lapsed = 90 + np.exp(4.0 - 0.4 * e + 0.8 * eps[:, 7])  # none: since the last order, or since sign-up
    recency = np.minimum(np.floor(np.where(freq > 0, recent, lapsed)), tenure)
    return {
        "tenure_days": tenure.astype(np.int64),
        "recency_days": recency.astype(np.int64),
        "frequency_90d": freq.astype(np.int64),
        "monetary_90d": spend,
        "sessions_30d": sessions.astype(np.int64),
        "cart_adds_30d": carts.astype(np.int64),
    }


def _who(rng: np.random.Generator, latent: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Platform, device and language per user, and the six uniforms per user drawn for them (and for later)."""
    e, a = latent[:, 0], latent[:, 1]
    u = rng.random((len(latent), 6))
    lang = np.where(u[:, 0] < 0.5, "zh", "en")
    app, web = (
        u[:, 1] < 0.45 + 0.1 * np.tanh(e),
        u[:, 1] < 0.75 - 0.15 * (lang == "zh"),
    )  # zh: more mini programs
    platform = np.select([app, web], ["app", "web"], "mini_program")
    ios = np.where(u[:, 2] < _sigmoid(0.8 * a - 0.2), "ios", "android")
    device = np.where((platform == "web") & (u[:, 3] < 0.8), "desktop", ios)
    return {"platform": platform, "device": device, "lang": lang}, u


def _categories(
    rng: np.random.Generator, affluence: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's top 3 categories (tilted by affluence), how many they buy (1-3, from uniforms `u`), and shares."""
    n = len(affluence)
    gumbel = -np.log(-np.log(rng.random((n, len(TILT)))))
    top3 = np.argsort(-(np.array(list(TILT.values())) * affluence[:, None] + gumbel), axis=1)[:, :3]
    kinds = 1 + (u > 0.3) + (u > 0.7)  # categories bought: 1, 2 or 3
    shares = np.sort(rng.dirichlet(np.ones(3), n), axis=1)[:, ::-1]
    return top3, kinds, shares


def _texts(
    rng: np.random.Generator,
    latent: np.ndarray,
    lang: np.ndarray,
    top3: np.ndarray,
    kinds: np.ndarray,
    shares: np.ndarray,
) -> dict[str, list[str]]:
    """The category mix and the three texts (query, chat, review) per user, by column name."""
    n = len(latent)
    # Each slot's level is its latent plus noise, cut at CUTS.
    shown = np.column_stack([latent[:, "easi".index(letter)] for letter, _ in SLOTS.values()])
    levels = np.digitize(
        shown + rng.standard_normal((n, len(SLOTS))) * [sd for _, sd in SLOTS.values()], CUTS
    )
    w = rng.random((n, 14))  # 11 phrase picks, then the category of each of the 3 texts
    names, mix, texts = list(TILT), [], []
    for r in range(n):
        share = np.maximum(np.round(shares[r, : kinds[r]] / shares[r, : kinds[r]].sum(), 2), 0.01)
        share[0] = 1 - share[1:].sum()
        mix.append(";".join(f"{names[c]}:{x:.2f}" for c, x in zip(top3[r], share)))
        cats = [top3[r, 0] if x < 0.7 or kinds[r] == 1 else top3[r, 1] for x in w[r, 11:]]
        texts.append(_text(lang[r], levels[r], w[r, :11], cats))
    query, chat, review = (list(t) for t in zip(*texts))
    return {"category_mix": mix, "last_query": query, "chat": chat, "review": review}


def _labels(
    rng: np.random.Generator, latent: np.ndarray, u: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Label indices per task, the purchasing power score and the conversion probability (drawn against `u`)."""
    e, a, s, i = latent.T
    z = rng.standard_normal((len(latent), 5))
    power = _sigmoid(1.6 * (0.85 * a + 0.25 * e + 0.35 * z[:, 1]))
    convert_prob = _sigmoid(-1.3 + 2.6 * i + 1.2 * e)
    value = 0.65 * e + 0.4 * a + 0.6 * s + 0.4 * z[:, 2]
    warm = 0.8 * i + 0.3 * e + 0.4 * z[:, 3] > 0
    index = {
        "purchase_intent": np.digitize(0.8 * i + 0.35 * e + 0.45 * z[:, 0], [-0.45, 0.45]),
        "purchasing_power": np.digitize(power, [0.35, 0.65]),
        "value_segment": np.select([value > 0.9, value > 0, warm], [3, 2, 1], 0),
        "churn": (-0.9 * s - 0.9 * e + 0.5 * z[:, 4] > 0.55).astype(int),
        "conversion": (u < convert_prob).astype(int),
    }
    return index, power, convert_prob
