"""The embedded default dataset: deterministic generated Spanish product titles.

Written in the official MeLi 2019 CSV format (`title,label_quality,language,category`, gzip) so
the offline demo goes through exactly the code path of the real file. The generator aims at
titles that look and behave like MercadoLibre's: related categories share words ("funda" is both
a phone and a tablet cover, "cargador" a phone and a notebook charger), brands span a whole
family of categories, and titles carry model numbers, sizes, colours, sales words, typos and
missing accents. About 20% of labels are `unreliable`, and some of those are wrong (a related
category, sometimes any), as in the real data. A few rows are deliberately bad (empty title,
missing category, unknown language, nothing left after cleaning) so the bad-row accounting runs
in the demo too. A decent classifier lands well below a balanced accuracy of 1.0.

    python -m meli.data.demo --rows 6000 --categories 30 --seed 42 --out results/data/source/demo.csv.gz

The same arguments give the same bytes (gzip header time fixed at 0).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import unicodedata
from pathlib import Path

import numpy as np

from meli.cli import entry_point
from meli.io import atomic_path, setup_logging

# family -> brands, words shared by the family's categories, "para ..." targets
FAMILIES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "phone": (
        ["Samsung", "Motorola", "Xiaomi", "Apple", "Huawei", "LG", "Nokia", "Alcatel"],
        ["bluetooth", "usb", "original", "compatible", "universal", "tipo c"],
        ["samsung galaxy a10", "galaxy s20", "moto g7", "moto e6", "iphone 11", "iphone 8 plus",
         "redmi note 9", "huawei p30", "ipad", "lg k40", "celular"],
    ),
    "kitchen": (
        ["Tramontina", "Oster", "Philips", "Peabody", "Atma", "Liliana", "Moulinex", "Hudson", "Tefal", "Victorinox"],
        ["acero inoxidable", "cocina", "antiadherente", "mango", "tapa", "litros", "watts"],
        ["cocina", "asado", "parrilla", "chef", "restaurante", "hogar"],
    ),
    "beauty": (
        ["Gama", "Remington", "Philips", "Wahl", "Babyliss", "Conair", "Kemei", "Panasonic"],
        ["profesional", "cerámica", "iones", "cabello", "pelo", "barbería", "inalámbrica"],
        ["pelo", "barba", "cabello", "mujer", "hombre", "peluquería"],
    ),
    "auto": (
        ["Bosch", "Fremax", "NGK", "Fram", "Hella", "Mahle", "Cofap", "Wega", "Ferodo"],
        ["delantero", "trasero", "juego", "repuesto", "auto", "camioneta", "original"],
        ["gol trend", "corsa", "fiesta", "palio", "clio", "peugeot 208", "ford ka", "focus", "onix",
         "hilux", "amarok", "suran", "vw up"],
    ),
    "computer": (
        ["HP", "Lenovo", "Dell", "Asus", "Logitech", "Genius", "Kingston", "Sandisk", "Redragon", "Acer"],
        ["usb", "gamer", "inalámbrico", "rgb", "pc", "notebook", "gb"],
        ["notebook", "pc", "gamer", "oficina", "mac", "netbook"],
    ),
    "clothing": (
        ["Nike", "Adidas", "Puma", "Topper", "Reebok", "Kappa", "Everlast", "Fila", "Umbro"],
        ["hombre", "mujer", "talle", "deportiva", "urbana", "algodón", "niños"],
        ["hombre", "mujer", "niño", "running", "gimnasio", "invierno"],
    ),
    "tools": (
        ["Black Decker", "Bosch", "Dewalt", "Stanley", "Makita", "Gamma", "Karcher", "Lusqtoff", "Einhell"],
        ["watts", "profesional", "eléctrico", "inalámbrico", "batería", "maletín", "kit"],
        ["taller", "hogar", "jardín", "construcción", "madera", "metal"],
    ),
}

# name -> (family, head nouns, category words)
CATEGORIES: dict[str, tuple[str, list[str], list[str]]] = {
    "CELLPHONE_COVERS": ("phone", ["funda", "carcasa", "case", "estuche"], ["silicona", "antigolpe", "transparente", "flip cover", "rígida", "tpu", "anillo"]),
    "TABLET_COVERS": ("phone", ["funda", "estuche", "carcasa"], ["tablet", "tab", "smart cover", "10 pulgadas", "libro", "teclado", "giratoria"]),
    "KITCHEN_KNIVES": ("kitchen", ["cuchillo", "cuchillos", "set de cuchillos"], ["chef", "cocinero", "hoja", "filo", "santoku", "carne", "serrucho"]),
    "FRYING_PANS": ("kitchen", ["sartén", "sartenes", "wok"], ["teflón", "24 cm", "28 cm", "inducción", "panqueques", "bifera", "essential"]),
    "HAIR_CLIPPERS": ("beauty", ["máquina de cortar pelo", "cortadora de pelo", "patillera", "recortadora"], ["cuchillas", "peines", "corte", "afeitar", "degrade", "trimmer"]),
    "HAIR_STRAIGHTENERS": ("beauty", ["planchita", "plancha de pelo", "alisadora", "buclera"], ["titanio", "230 grados", "alisado", "rizos", "placas", "keratina"]),
    "VEHICLE_BRAKE_DISCS": ("auto", ["disco de freno", "discos de freno", "par discos"], ["ventilado", "freno", "macizo", "rectificado", "bd5298", "rueda"]),
    "BRAKE_PADS": ("auto", ["pastillas de freno", "pastilla de freno", "juego pastillas"], ["freno", "cerámicas", "semimetálica", "kit", "sensor"]),
    "NOTEBOOKS": ("computer", ["notebook", "laptop", "netbook"], ["intel core i5", "core i3", "ryzen 5", "8gb ram", "ssd 240", "15.6", "windows 10"]),
    "KEYBOARDS": ("computer", ["teclado", "teclado y mouse", "kit teclado"], ["mecánico", "español", "membrana", "ñ", "teclas", "switch"]),
    "SNEAKERS": ("clothing", ["zapatillas", "zapatilla", "tenis"], ["running", "suela", "deportivas", "training", "air", "talle 42"]),
    "T_SHIRTS": ("clothing", ["remera", "remeras", "camiseta", "musculosa"], ["manga corta", "estampada", "cuello redondo", "lisa", "dry fit"]),
    "DRILLS": ("tools", ["taladro", "taladro percutor", "rotomartillo"], ["percutor", "13mm", "mandril", "velocidad variable", "mechas", "sds"]),
    "ELECTRIC_PRESSURE_WASHERS": ("tools", ["hidrolavadora", "lavadora a presión", "hidro lavadora"], ["bar", "1400w", "presión", "pistola", "manguera", "lanza"]),
    "SCREEN_PROTECTORS": ("phone", ["vidrio templado", "protector de pantalla", "film", "mica"], ["9h", "glass", "pantalla", "hidrogel", "full cover", "curvo"]),
    "POTS": ("kitchen", ["olla", "cacerola", "cacerolas", "batería de cocina"], ["5 litros", "hierro", "aluminio", "vapor", "bifera", "esmaltada"]),
    "HAIR_DRYERS": ("beauty", ["secador de pelo", "secador", "secadora"], ["2000w", "difusor", "turbo", "aire frío", "concentrador"]),
    "AUTOMOTIVE_AIR_FILTERS": ("auto", ["filtro de aire", "filtro aire", "kit filtros"], ["filtro", "motor", "habitáculo", "aceite", "service", "1.6"]),
    "COMPUTER_MICE": ("computer", ["mouse", "ratón", "mouse gamer"], ["óptico", "dpi", "pad", "ergonómico", "botones", "led"]),
    "BACKPACKS": ("clothing", ["mochila", "mochilas", "morral"], ["escolar", "espalda", "porta notebook", "impermeable", "viaje", "bolsillos"]),
    "SCREWDRIVERS": ("tools", ["destornillador", "juego de destornilladores", "atornillador"], ["puntas", "phillips", "torx", "imantado", "precisión", "philips"]),
    "CELLPHONE_CHARGERS": ("phone", ["cargador", "cable", "cargador rápido"], ["carga rápida", "micro usb", "lightning", "5v 2a", "auto", "fuente"]),
    "BLENDERS": ("kitchen", ["licuadora", "minipimer", "mixer"], ["vaso", "600w", "velocidades", "batidora", "jarra", "picadora"]),
    "FALSE_EYELASHES": ("beauty", ["pestañas postizas", "pestañas", "kit pestañas"], ["pelo a pelo", "visón", "pegamento", "magnéticas", "volumen", "extensiones"]),
    "SPARK_PLUGS": ("auto", ["bujía", "bujías", "juego de bujías"], ["iridium", "encendido", "motor", "nafta", "gnc", "bkr6e"]),
    "NOTEBOOK_CHARGERS": ("computer", ["cargador", "fuente", "cargador notebook"], ["19v", "65w", "90w", "ficha", "3.42a", "alimentación"]),
    "BOOTS": ("clothing", ["botas", "borcegos", "bota", "botinetas"], ["cuero", "caña alta", "taco", "trekking", "forrada"]),
    "CIRCULAR_SAWS": ("tools", ["sierra circular", "sierra", "ingletadora"], ["disco", "corte", "185mm", "1500w", "guía", "madera"]),
    "HEADPHONES": ("phone", ["auriculares", "audífonos", "headset", "auricular"], ["inalámbricos", "in ear", "manos libres", "micrófono", "vincha", "tws"]),
    "COFFEE_MAKERS": ("kitchen", ["cafetera", "máquina de café", "cafetera express"], ["espresso", "cápsulas", "filtro", "moka", "1.2 litros", "italiana"]),
    "LIPSTICKS": ("beauty", ["labial", "labiales", "lápiz labial"], ["matte", "larga duración", "gloss", "tono", "hidratante"]),
    "FOG_LIGHTS": ("auto", ["faro auxiliar", "faros antiniebla", "kit faro"], ["led", "antiniebla", "auxiliar", "luz", "h3", "óptica"]),
    "USB_FLASH_DRIVES": ("computer", ["pendrive", "memoria usb", "pen drive"], ["16gb", "32gb", "64gb", "3.0", "metálico", "datatraveler"]),
    "JACKETS": ("clothing", ["campera", "camperón", "chaqueta", "parka"], ["impermeable", "abrigo", "capucha", "inflable", "polar", "rompeviento"]),
    "ANGLE_GRINDERS": ("tools", ["amoladora", "amoladora angular", "mini amoladora"], ["115mm", "disco", "desbaste", "700w", "esmeril"]),
    "SMARTWATCHES": ("phone", ["smartwatch", "reloj inteligente", "smart band", "reloj"], ["notificaciones", "pulsera", "ritmo cardíaco", "pasos", "malla"]),
    "KITCHEN_SCALES": ("kitchen", ["balanza de cocina", "balanza digital", "balanza"], ["5kg", "precisión", "gramos", "digital", "repostería"]),
    "NAIL_POLISHES": ("beauty", ["esmalte de uñas", "esmalte", "esmaltes"], ["uñas", "semipermanente", "gel", "uv", "manicura"]),
    "CAR_BATTERIES": ("auto", ["batería", "batería auto", "acumulador"], ["12v", "65 amper", "75ah", "libre mantenimiento", "borne"]),
    "MONITORS": ("computer", ["monitor", "pantalla", "monitor led"], ["24 pulgadas", "full hd", "hdmi", "ips", "144hz", "vga"]),
}

COLORS = ["negro", "negra", "blanco", "blanca", "rojo", "azul", "rosa", "gris", "verde", "dorado", "plateado", "violeta"]
SALES_WORDS = ["original", "nuevo", "nueva", "oferta", "envío gratis", "kit", "pack x2", "premium", "importado",
               "garantía", "liquidación", "excelente", "mayorista", "promo", "calidad", "local"]
RELATED_BY_FAMILY = {fam: [c for c, v in CATEGORIES.items() if v[0] == fam] for fam in FAMILIES}
BAD_TITLES = ["", "   ", "!!!", "de la para", "---", "..."]  # nothing left after cleaning for most


def category_order() -> list[str]:
    """Categories in the order `--categories K` takes them: two per family in turn, so even a
    small K includes pairs of related (confusable) categories."""
    queues = {fam: list(cats) for fam, cats in RELATED_BY_FAMILY.items()}
    order: list[str] = []
    while any(queues.values()):
        for queue in queues.values():
            order.extend(queue[:2])
            del queue[:2]
    return order


MAX_CATEGORIES = len(CATEGORIES)


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = rng.integers(3)
    if kind == 0:
        return word[:i] + word[i + 1:]  # dropped letter
    if kind == 1:
        return word[:i - 1] + word[i] + word[i - 1] + word[i + 1:]  # swapped letters
    return word[:i] + word[i] + word[i:]  # doubled letter


def _model_number(rng: np.random.Generator) -> str:
    letters = "abcdefghjklmnprstvwxz"
    kind = rng.integers(4)
    if kind == 0:
        return f"{letters[rng.integers(len(letters))]}{rng.integers(1, 999)}"
    if kind == 1:
        return f"{letters[rng.integers(len(letters))]}{letters[rng.integers(len(letters))]}-{rng.integers(100, 9999)}"
    if kind == 2:
        return str(rng.integers(100, 99999))
    return f"{rng.integers(1, 40)}{['cm', 'mm', 'w', 'gb', 'v', 'l'][rng.integers(6)]}"


def _pick(items: list[str], rng: np.random.Generator) -> str:
    return items[int(rng.integers(len(items)))]


def make_title(category: str, rng: np.random.Generator, hard: bool) -> str:
    """One title for ``category``; a ``hard`` title borrows a related category's head noun or
    has none at all, as sloppy real listings do. (The random draws are made in a fixed order:
    the demo set is a function of its seed.)"""
    family, nouns, words = CATEGORIES[category]
    brands, shared, targets = FAMILIES[family]
    if hard:
        sibling = _pick(RELATED_BY_FAMILY[family], rng)
        noun = _pick(CATEGORIES[sibling][1], rng) if rng.random() < 0.6 else ""
        words = words if rng.random() < 0.4 else CATEGORIES[sibling][2] + shared
    else:
        noun = nouns[min(int(rng.geometric(0.55)) - 1, len(nouns) - 1)]  # first noun most common
    parts = _descriptors(words, shared, brands, rng)
    if rng.random() < 0.3:
        parts.insert(int(rng.integers(len(parts) + 1)), "para " + _pick(targets, rng))
    if noun:
        parts.insert(0 if rng.random() < 0.8 else int(rng.integers(len(parts) + 1)), noun)
    return _sloppy(" ".join(parts), rng)


def _descriptors(words: list[str], shared: list[str], brands: list[str], rng: np.random.Generator) -> list[str]:
    """A title's words besides its head noun, shuffled: the category's words, maybe a shared word,
    a brand, a model number, a colour, a sales word."""
    parts = [_pick(words, rng) for _ in range(int(rng.integers(1, 3)))]
    for chance, pick in ((0.35, lambda: _pick(shared, rng)), (0.6, lambda: _pick(brands, rng)),
                         (0.45, lambda: _model_number(rng)), (0.35, lambda: _pick(COLORS, rng)),
                         (0.35, lambda: _pick(SALES_WORDS, rng))):
        if rng.random() < chance:
            parts.append(pick())
    rng.shuffle(parts)
    return parts


def _sloppy(title: str, rng: np.random.Generator) -> str:
    """What sellers do to titles: accents dropped, a typo, Title Case or CAPITALS, trailing noise."""
    if rng.random() < 0.5:
        title = _strip_accents(title)
    if rng.random() < 0.12:
        tokens = title.split()
        j = int(rng.integers(len(tokens)))
        tokens[j] = _typo(tokens[j], rng)
        title = " ".join(tokens)
    style = rng.random()
    if style < 0.65:
        title = " ".join(t[:1].upper() + t[1:] for t in title.split())
    elif style < 0.75:
        title = title.upper()
    if rng.random() < 0.1:
        title += _pick([" !!", " - ", "!!!", " *", " ..", " + regalo"], rng)
    return title


def generate(rows: int, categories: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``rows`` records (title, label_quality, language, category), deterministic in ``seed``."""
    if not 2 <= categories <= MAX_CATEGORIES:
        raise ValueError(f"--categories must be between 2 and {MAX_CATEGORIES} (the generator knows {MAX_CATEGORIES})")
    rng = np.random.default_rng(seed)
    names = category_order()[:categories]
    weights = 1.0 / np.sqrt(np.arange(1, categories + 1))  # a long tail, as in the real data
    rng.shuffle(weights)
    labels = rng.choice(categories, size=rows, p=weights / weights.sum())
    records = []
    for label in labels:
        category = names[label]
        title = make_title(category, rng, hard=rng.random() < 0.12)
        quality = "unreliable" if rng.random() < 0.2 else "reliable"
        if quality == "unreliable" and rng.random() < 0.3:  # a wrong label, usually a related category
            family = CATEGORIES[category][0]
            pool = [c for c in RELATED_BY_FAMILY[family] if c in names and c != category]
            category = _pick(pool, rng) if pool and rng.random() < 0.7 else names[int(rng.integers(categories))]
        records.append((title, quality, "spanish", category))
    # A few deliberately bad rows (about 0.5%), at seeded positions.
    n_bad = max(3, rows // 200)
    for i, pos in enumerate(rng.choice(rows, size=min(n_bad, rows), replace=False)):
        title, quality, language, category = records[pos]
        kind = i % 3
        if kind == 0:
            title = _pick(BAD_TITLES, rng)
        elif kind == 1:
            category = ""
        else:
            language = _pick(["", "english"], rng)
        records[pos] = (title, quality, language, category)
    return records


def write_csv_gz(records: list[tuple[str, str, str, str]], out: str | Path) -> None:
    """Official CSV layout with header, gzip with a fixed header time: same records, same bytes."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("title", "label_quality", "language", "category"))
    writer.writerows(records)
    with atomic_path(out) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            gz.write(text.getvalue().encode("utf-8"))


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging("meli.data.demo")
    try:
        records = generate(args.rows, args.categories, args.seed)
    except ValueError as err:
        log.error("%s", err)
        return 2
    write_csv_gz(records, args.out)
    log.info("wrote %s: %d rows, %d categories, seed %d", args.out, len(records), args.categories, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
