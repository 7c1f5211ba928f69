"""medSpaCy target rules for the 18 CT-RATE finding labels in chest-CT reports.

Written as a medSpaCy user would write them for CT-RATE-style reports, from general radiology
knowledge only (common synonyms, plurals, abbreviations and British spellings), without looking at
mg3d's lexicon (configs/) or the annotated evaluation reports (tests/report-eval/*.jsonl).

Each rule is a `TargetRule(literal, category=<CT-RATE label>, pattern=...)`:
- no pattern: the literal is matched case-insensitively as a phrase (token LOWER);
- a list pattern: spaCy token patterns (the blank medSpaCy pipeline has no lemmatizer, so plurals
  are written out as regexes on LOWER);
- a string pattern: a case-insensitive regular expression over the text (used where hyphens and
  line wraps vary, e.g. "ground-glass\\nopacities"), snapped to token boundaries by medSpaCy.

Entities go to `doc.ents`, which cannot overlap: where two rules overlap medSpaCy keeps the longest
match. Coordinations that name two labels with one head noun ("pleural or pericardial effusion",
"traction bronchiectasis") use a look-ahead so that each label gets its own token.

Assertions come from medSpaCy's default ConText rules (`medspacy.load()`); nothing here changes
them.
"""
from medspacy.ner import TargetRule

MM = "Medical material"
AWC = "Arterial wall calcification"
CM = "Cardiomegaly"
PCE = "Pericardial effusion"
CAC = "Coronary artery wall calcification"
HH = "Hiatal hernia"
LAP = "Lymphadenopathy"
EMPH = "Emphysema"
ATEL = "Atelectasis"
NOD = "Lung nodule"
OPAC = "Lung opacity"
FIB = "Pulmonary fibrotic sequela"
PLE = "Pleural effusion"
MOS = "Mosaic attenuation pattern"
PBT = "Peribronchial thickening"
CONS = "Consolidation"
BRX = "Bronchiectasis"
IST = "Interlobular septal thickening"


def _tok(regex):
    """One token whose lower-cased text matches `regex` (anchored)."""
    return {"LOWER": {"REGEX": f"^(?:{regex})$"}}


RULES = [
    # --- Medical material: tubes, lines, catheters, leads, wires, stents, clips, valves, ports ---
    TargetRule("endotracheal tube", MM, pattern=r"\b(endotracheal|endo-tracheal|tracheostomy|tracheal|nasogastric|naso-gastric|orogastric|oro-gastric|feeding|gastrostomy|chest|thoracostomy|intercostal|pleural|drainage|ng|og|et)\s+tubes?\b"),
    TargetRule("tube", MM, pattern=[_tok("tubes?")]),
    TargetRule("ETT", MM),
    TargetRule("NGT", MM),
    TargetRule("tracheostomy", MM, pattern=[_tok("tracheostomy|tracheotomy"), _tok("cannulas?|cannulae|tubes?")]),
    TargetRule("central venous catheter", MM, pattern=r"\b(central\s+venous|central|venous|arterial|dialysis|hemodialysis|haemodialysis|swan[\s-]*ganz|pulmonary\s+artery|port|picc|jugular|subclavian)\s+(catheters?|lines?)\b"),
    TargetRule("catheter", MM, pattern=[_tok("catheters?")]),
    TargetRule("PICC", MM, pattern=[_tok("piccs?")]),
    TargetRule("CVC", MM, pattern=[_tok("cvcs?")]),
    TargetRule("lines and tubes", MM, pattern=r"\b(lines\s+and\s+tubes|tubes\s+and\s+lines|support\s+devices?|monitoring\s+devices?|medical\s+devices?)\b"),
    TargetRule("pacemaker", MM, pattern=[_tok("pacemakers?")]),
    TargetRule("pacemaker leads", MM, pattern=r"\b(pacemaker|pacing|icd|aicd|defibrillator|cardiac|epicardial|transvenous)\s+(leads?|wires?|generators?|devices?)\b"),
    TargetRule("ICD", MM, pattern=[_tok("icd|aicd")]),
    TargetRule("defibrillator", MM, pattern=[_tok("defibrillators?")]),
    TargetRule("sternotomy wires", MM, pattern=r"\b(median\s+)?(sternotomy|sternal|cerclage|surgical)\s+(wires?|sutures?|staples?)\b"),
    TargetRule("wire", MM, pattern=[_tok("wires?|guidewires?")]),
    TargetRule("clips", MM, pattern=[_tok("clips?")]),
    TargetRule("stent", MM, pattern=[_tok("stents?|endografts?|stent-grafts?")]),
    TargetRule("stent graft", MM, pattern=[_tok("stent"), {"TEXT": "-", "OP": "?"}, _tok("grafts?")]),
    TargetRule("prosthetic valve", MM, pattern=r"\b(prosthetic|mechanical|bioprosthetic|artificial)\s+(aortic\s+|mitral\s+|heart\s+|cardiac\s+)?valves?\b"),
    TargetRule("valve prosthesis", MM, pattern=r"\b(aortic\s+|mitral\s+)?valve\s+(prosthesis|prostheses|replacement)\b"),
    TargetRule("port", MM, pattern=r"\b(port[\s-]*a[\s-]*cath|portacath|(chest\s+wall|venous|implanted|infusion|subcutaneous|chemotherapy|chemo)\s+port)s?\b"),
    TargetRule("drain", MM, pattern=[_tok("drains?")]),
    TargetRule("staple line", MM, pattern=r"\b(staple\s+lines?|surgical\s+staples|suture\s+(lines?|material))\b"),
    TargetRule("fiducial marker", MM, pattern=r"\bfiducial\s+(markers?|seeds?)\b"),
    TargetRule("LVAD", MM, pattern=r"\b(lvad|ventricular\s+assist\s+device|impella|ecmo\s+cannulae?|cannulae?)\b"),
    TargetRule("implant", MM, pattern=[_tok("implants?")]),
    TargetRule("embolization coils", MM, pattern=r"\b(embolization|embolisation)\s+coils?\b"),

    # --- Arterial wall calcification (aorta and other arteries; coronary below) ---
    TargetRule("aortic calcification", AWC, pattern=r"\b(aortic|aorta|arterial|vascular|mural|atherosclerotic|atheromatous|calcific|calcified)\s+(wall\s+)?(calcifications?|calcific\s+plaques?|calcified\s+plaques?|plaques?|atheromas?|atheromata)\b"),
    TargetRule("calcified atheromatous plaques", AWC, pattern=r"\b(calcified|calcific)\s+(atheromatous|atherosclerotic)\s+plaques?\b"),
    TargetRule("atherosclerosis", AWC, pattern=[_tok("atherosclerosis|arteriosclerosis|atheroma|atheromas|atheromatosis")]),
    TargetRule("atherosclerotic changes", AWC, pattern=r"\b(atherosclerotic|atheromatous|arteriosclerotic)\s+(changes?|disease|calcifications?|plaques?|wall\s+changes)\b"),
    TargetRule("calcified plaques", AWC, pattern=r"\b(calcified|calcific)\s+(plaques?|atheroma)\b"),
    TargetRule("calcification of the aorta", AWC, pattern=r"\bcalcifications?\s+(of|in|within|along)\s+(the\s+)?(wall\s+of\s+the\s+)?(thoracic\s+|abdominal\s+)?(aorta|aortic\s+(wall|arch)|arteries|arterial\s+walls?)\b"),
    TargetRule("aortic and coronary", AWC, pattern=r"\b(aortic|aorta)(?=\s+(and|or|&)\s+coronary\s+(artery\s+|arterial\s+)?(wall\s+)?(calcifications?|atherosclerosis|plaques?))"),

    # --- Coronary artery wall calcification ---
    TargetRule("coronary artery calcification", CAC, pattern=r"\bcoronary\s+(artery\s+|arterial\s+|arteries\s+|vessel\s+)?(wall\s+)?(calcifications?|calcium|calcific\s+plaques?|calcified\s+plaques?|plaques?|atherosclerosis|atheroma|atheromatous\s+plaques?|atherosclerotic\s+(changes|plaques?|calcifications?)|arteriosclerosis)\b"),
    TargetRule("calcified coronary arteries", CAC, pattern=r"\bcalcified\s+coronary\s+(arteries|artery|vessels?)\b"),
    TargetRule("calcification of the coronary arteries", CAC, pattern=r"\bcalcifications?\s+(of|in|within)\s+(the\s+)?(left\s+main\s+|lad\s+)?coronary\s+(arteries|artery|vessels?)\b"),

    # --- Cardiomegaly ---
    TargetRule("cardiomegaly", CM),
    TargetRule("enlarged heart", CM, pattern=r"\b(enlarged|increased)\s+(heart|cardiac\s+(silhouette|size|contour|shadow))\b"),
    TargetRule("cardiac enlargement", CM, pattern=r"\b(cardiac|heart)\s+(enlargement|is\s+enlarged|was\s+enlarged|appears\s+enlarged)\b"),
    TargetRule("heart size is increased", CM, pattern=r"\b(heart|cardiac)\s+size\s+(is\s+|was\s+|appears\s+)?(mildly\s+|slightly\s+|moderately\s+|markedly\s+)?(increased|enlarged)\b"),
    TargetRule("enlargement of the heart", CM, pattern=r"\benlargement\s+of\s+the\s+(heart|cardiac\s+chambers)\b"),
    TargetRule("increased cardiothoracic ratio", CM, pattern=r"\b(increased\s+cardiothoracic\s+ratio|cardiothoracic\s+ratio\s+(is\s+|has\s+)?(increased|enlarged))\b"),

    # --- Pericardial effusion ---
    TargetRule("pericardial effusion", PCE, pattern=r"\bpericardial\s+(effusions?|fluid(\s+collection)?|collection)\b"),
    TargetRule("hydropericardium", PCE, pattern=[_tok("hydropericardium|haemopericardium|hemopericardium")]),
    TargetRule("pericardial ... effusion", PCE, pattern=r"\bpericardial(?=\s*(or|and|/)\s*pleural\s+effusions?)"),

    # --- Hiatal hernia ---
    TargetRule("hiatal hernia", HH, pattern=r"\b(hiatal|hiatus|paraesophageal|paraoesophageal|para-esophageal|para-oesophageal|sliding)\s+hernias?\b"),
    TargetRule("hernia through the hiatus", HH, pattern=r"\bherniation\s+of\s+the\s+stomach\b"),

    # --- Lymphadenopathy ---
    TargetRule("lymphadenopathy", LAP, pattern=[_tok("lymphadenopathy|lymphadenopathies|adenopathy|adenopathies|lymphadenomegaly")]),
    TargetRule("enlarged lymph nodes", LAP, pattern=r"\b(enlarged|pathologically\s+enlarged|pathological|pathologic|bulky|abnormal|suspicious)\s+(\w+\s+){0,2}?(lymph\s+)?nodes?\b"),
    TargetRule("lymph nodes of pathological size", LAP, pattern=r"\b(lymph\s+)?nodes?\s+(\w+\s+){0,2}?(of|in|with|at)\s+(a\s+)?(pathological|pathologic|enlarged|significant)\s+(size|sizes|dimensions?|appearance)\b"),
    TargetRule("lymph node enlargement", LAP, pattern=r"\b(lymph\s+node|nodal)\s+(enlargement|mass(es)?|conglomerates?)\b"),
    TargetRule("enlarged lymph node", LAP, pattern=r"\blymph\s+nodes?\s+(are\s+|is\s+)?(enlarged|pathologically\s+enlarged)\b"),

    # --- Emphysema ---
    TargetRule("emphysema", EMPH),
    TargetRule("emphysematous changes", EMPH, pattern=r"\bemphysematous\s*(changes?|areas?|lungs?|bullae|bulla|parenchyma)?\b"),
    TargetRule("bullae", EMPH, pattern=[_tok("bulla|bullae|bullous|bulli")]),
    TargetRule("bullous emphysema", EMPH, pattern=r"\b(centrilobular|centriacinar|paraseptal|panlobular|panacinar|bullous)\s+(emphysema|changes)\b"),

    # --- Atelectasis ---
    TargetRule("atelectasis", ATEL, pattern=[_tok("atelectasis|atelectases|atelectasia")]),
    TargetRule("atelectatic changes", ATEL, pattern=r"\batelectatic\s*(changes?|areas?|bands?|segments?|lobe|lung|parenchyma|foci)?\b"),
    TargetRule("lobar collapse", ATEL, pattern=r"\b(lobar|lobe|lung|segmental|subsegmental|complete|total|partial)\s+collapse\b"),
    TargetRule("collapse of the lobe", ATEL, pattern=r"\bcollapse\s+of\s+the\s+(\w+\s+){0,3}?(lobe|lung|segment)\b"),
    TargetRule("collapsed lobe", ATEL, pattern=r"\bcollapsed\s+(\w+\s+){0,2}?(lobe|lung|segment)\b"),
    TargetRule("collapse/consolidation", ATEL, pattern=r"\bcollapse(?=\s*(/|and|or)\s*consolidation)"),

    # --- Lung nodule ---
    TargetRule("nodule", NOD, pattern=[_tok("nodules?|micronodules?|micro-nodules?|nodulars?")]),
    TargetRule("nodular lesion", NOD, pattern=r"\bnodular\s+(lesions?|opacit(y|ies)|densit(y|ies)|appearances?|areas?|formations?|foci|focus|infiltrat\w*)\b"),
    TargetRule("lung mass", NOD, pattern=r"\b(lung|pulmonary|parenchymal|lobe|lobar|spiculated|cavitary|cavitating|apical|hilar)\s+(mass(es)?|tumou?rs?|neoplasms?)\b"),
    TargetRule("mass lesion", NOD, pattern=r"\bmass\s+lesions?\b"),
    TargetRule("pulmonary metastases", NOD, pattern=r"\b(pulmonary|lung|parenchymal)\s+(metastasis|metastases|metastatic\s+(nodules?|lesions?|deposits?))\b"),
    TargetRule("metastatic nodules", NOD, pattern=r"\bmetastatic\s+(nodules?|deposits?)\b"),
    TargetRule("granuloma", NOD, pattern=[_tok("granulomas?|granulomata")]),
    TargetRule("pulmonary lesion", NOD, pattern=r"\b(pulmonary|lung|parenchymal|solid|subsolid|part-solid|spiculated)\s+lesions?\b"),

    # --- Lung opacity: ground glass, opacity, density, infiltrate, contusion ---
    TargetRule("ground-glass opacity", OPAC, pattern=r"\bground[\s-]*glass(\s+(opacit(y|ies)|opacification|densit(y|ies)|attenuation|areas?|changes?|infiltrat\w*|appearance))?\b"),
    TargetRule("GGO", OPAC, pattern=[_tok("ggos?|ggo's")]),
    TargetRule("opacity", OPAC, pattern=[_tok("opacit(y|ies)|opacification|opacifications|opacified")]),
    TargetRule("densities", OPAC, pattern=[_tok("densities")]),
    TargetRule("increased density", OPAC, pattern=r"\b(increased|increase\s+in|patchy|parenchymal|hazy|focal)\s+(the\s+)?densit(y|ies)\b"),
    TargetRule("density increase", OPAC, pattern=r"\bdensit(y|ies)\s+(increases?|increased|changes?)\b"),
    TargetRule("infiltrate", OPAC, pattern=[_tok("infiltrates?|infiltration|infiltrations|infiltrative")]),
    TargetRule("contusion", OPAC, pattern=[_tok("contusions?")]),
    TargetRule("tree-in-bud", OPAC, pattern=r"\btree[\s-]*in[\s-]*bud(\s+(opacit(y|ies)|nodularity|pattern|appearance|changes?))?\b"),
    TargetRule("crazy paving", OPAC, pattern=r"\bcrazy[\s-]*paving\b"),
    TargetRule("hazy attenuation", OPAC, pattern=r"\b(hazy|increased)\s+(attenuation|parenchymal\s+attenuation)\b"),

    # --- Consolidation ---
    TargetRule("consolidation", CONS, pattern=[_tok("consolidations?|consolidative|consolidated|consolidating")]),
    TargetRule("air-space disease", CONS, pattern=r"\bair[\s-]*space\s+(disease|shadowing|filling|consolidation|process)\b"),
    TargetRule("air bronchograms", CONS, pattern=r"\bair\s+bronchograms?\b"),

    # --- Pulmonary fibrotic sequela ---
    TargetRule("fibrosis", FIB, pattern=[_tok("fibrosis|fibroses")]),
    TargetRule("fibrotic changes", FIB, pattern=r"\bfibrotic\s*(changes?|bands?|strands?|areas?|scarring|scars?|sequelae?|lesions?|densit(y|ies)|opacit(y|ies)|appearance|stripes?|foci)?\b"),
    TargetRule("fibrous bands", FIB, pattern=r"\b(fibrous|fibrotic|parenchymal|pleuroparenchymal|pleuro-parenchymal|linear|band-like)\s+(bands?|strands?|stripes?|striae)\b"),
    TargetRule("scarring", FIB, pattern=[_tok("scarring|scars?|scarred")]),
    TargetRule("sequelae", FIB, pattern=r"\b(sequela|sequelae|sequel)(\s+(changes?|findings?|lesions?))?\b"),
    TargetRule("honeycombing", FIB, pattern=r"\bhoneycomb(ing)?(\s+(pattern|changes?|cysts?|appearance))?\b"),
    TargetRule("reticulation", FIB, pattern=r"\b(reticulations?|reticular\s+(opacit(y|ies)|changes?|pattern|densit(y|ies)|abnormalit(y|ies)|markings?)|reticulonodular\s+(opacit(y|ies)|pattern|changes?))\b"),
    TargetRule("fibroatelectatic changes", FIB, pattern=r"\b(fibroatelectatic|fibro-atelectatic|fibrocicatricial|fibro-cicatricial|cicatricial)\s*(changes?|bands?|areas?)?\b"),
    TargetRule("post-inflammatory changes", FIB, pattern=r"\bpost[\s-]*(inflammatory|infectious|radiation|tuberculous|tb)\s+(changes?|sequelae?|scarring|fibrosis)\b"),
    TargetRule("traction (bronchiectasis)", FIB, pattern=r"\btraction(?=\s+(bronchiectas|bronchiolectas))"),

    # --- Pleural effusion ---
    TargetRule("pleural effusion", PLE, pattern=r"\bpleural\s+(effusions?|fluid(\s+collections?)?|collections?)\b"),
    TargetRule("effusion", PLE, pattern=[_tok("effusions?")]),
    TargetRule("hydrothorax", PLE, pattern=[_tok("hydrothorax")]),
    TargetRule("pleural ... effusion", PLE, pattern=r"\bpleural(?=\s*(or|and|/)\s*pericardial\s+effusions?)"),

    # --- Mosaic attenuation pattern ---
    TargetRule("mosaic attenuation", MOS, pattern=r"\bmosaic\s*(attenuation|perfusion|pattern|oligaemia|oligemia|appearance)?(\s+pattern)?\b"),
    TargetRule("air trapping", MOS, pattern=r"\bair[\s-]*trapping\b"),

    # --- Peribronchial thickening ---
    TargetRule("peribronchial thickening", PBT, pattern=r"\b(peribronchial|peribronchovascular|bronchovascular|bronchial(\s+wall)?|bronchial\s+walls?|airway(\s+wall)?)\s+(interstitial\s+)?(thickening|thickenings|thickened|cuffing)\b"),
    TargetRule("thickened bronchial walls", PBT, pattern=r"\bthick(ened|ening\s+of\s+the)\s+(bronchial|bronchus|airway)\s*(walls?)?\b"),
    TargetRule("bronchial wall thickening (word order)", PBT, pattern=r"\bthickening\s+of\s+(the\s+)?(bronchial|peribronchial)\s+(walls?|interstitium)\b"),

    # --- Bronchiectasis ---
    TargetRule("bronchiectasis", BRX, pattern=[_tok("bronchiectasis|bronchiectases|bronchiectatic|bronchiolectasis|bronchiolectases")]),
    TargetRule("bronchiectatic changes", BRX, pattern=r"\bbronchiectatic\s+(changes?|areas?|airways?|segments?|bronchi)\b"),
    TargetRule("dilated bronchi", BRX, pattern=r"\b(dilated|dilatation\s+of\s+the|dilation\s+of\s+the)\s+(bronchi|bronchus|airways|bronchioles)\b"),

    # --- Interlobular septal thickening ---
    TargetRule("interlobular septal thickening", IST, pattern=r"\b(interlobular\s+)?sept(al|a)\s+(thickening|thickenings|thickened|lines)\b"),
    TargetRule("thickened interlobular septa", IST, pattern=r"\bthickened\s+(interlobular\s+)?(septa|septae|septum)\b"),
    TargetRule("thickening of the interlobular septa", IST, pattern=r"\bthickening\s+of\s+(the\s+)?(interlobular\s+)?(septa|septae|septum)\b"),
    TargetRule("Kerley B lines", IST, pattern=r"\bkerley\s+(b\s+)?lines?\b"),
]
