"""Spanish and Portuguese stopwords, written here so cleaning works offline (no NLTK download).

Function words only (articles, prepositions, pronouns, conjunctions, common auxiliaries): product
words such as "kit", "nuevo" or "original" stay, since they can carry signal. Lists are lowercase
with accents; `meli.data.text` normalises them exactly like the titles before comparing.
"""
from __future__ import annotations

SPANISH: frozenset[str] = frozenset(
    """
    a al algo algunas algunos ante antes como con contra cual cuales cuando de del desde donde
    durante e el ella ellas ello ellos en entre era erais eran eras eres es esa esas ese eso esos
    esta estaba estado estais estamos estan estar estas este esto estos estoy fue fueron fui fuimos
    ha habia habian han has hasta hay la las le les lo los mas me mi mis mucho muchos muy nada ni no
    nos nosotras nosotros nuestra nuestras nuestro nuestros o os otra otras otro otros para pero poco
    por porque que quien quienes se sea sean ser si siempre sin sobre sois solo somos son soy su sus
    suya suyas suyo suyos tambien tanto te tenemos tener tengo ti tiene tienen todo todos tu tus tuya
    tuyo u un una unas uno unos usted ustedes vosotras vosotros y ya yo
    él ésta éste ésto está están estás había habían más mí mío mía qué quién sí también tú
    cómo cuál cuándo dónde aquí allí así
    """.split()
)

PORTUGUESE: frozenset[str] = frozenset(
    """
    a ao aos aquela aquelas aquele aqueles aquilo as ate com como da das de dela delas dele deles
    depois do dos e ela elas ele eles em entre era eram essa essas esse esses esta estas este estes
    eu foi foram ha isso isto ja lhe lhes mais mas me mesmo meu meus minha minhas muito na nas nem
    no nos nossa nossas nosso nossos num numa o os ou para pela pelas pelo pelos por qual quando que
    quem se sem ser seu seus so sua suas tambem te tem ter teu teus tu tua tuas um uma umas uns voce
    voces vos
    à às até é está estão há já não só também você vocês pra pro
    """.split()
)

STOPWORDS: dict[str, frozenset[str]] = {"spanish": SPANISH, "portuguese": PORTUGUESE}
