//! DirkDB's error texts (DIRKDB-DIALECT.md §8.2), as the parser and translator raise them. The
//! server sends each after `Hadisoana : `.

/// An error in DirkDB's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirkError {
    /// No statement keyword matched.
    #[error("Commande valide non trouvé")]
    NoCommand,
    /// Text left after a complete statement.
    #[error("Can not eval because the input contains some remaining='{0}'")]
    Remaining(String),
    /// No operand where one is expected, or an unterminated string.
    #[error("Token available not found near : '{0}'")]
    TokenNotFound(String),
    /// `dia` / `dia tsy` not followed by `null`.
    #[error("After 'is' or 'is not' must be 'null' ")]
    AfterIs,
    /// A parenthesised expression without its `)`.
    #[error("Parense missing : / Token wrong place : OTHER(String.()")]
    ParenMissing,
    /// A required `(` list is missing.
    #[error("Parenthèse ouvrante '(' attendue")]
    OpenParen,
    /// A list neither continues nor ends.
    #[error("Virgule ',' ou parenthèse fermante ')' attendue")]
    CommaOrClose,
    /// Something else was expected after a comma.
    #[error("{0} attendu après la virgule")]
    AfterComma(&'static str),
    /// A `sanda` value that is no literal.
    #[error("Attendu (sans casse) \"null\", trouvé \"{0}\"")]
    NullExpected(String),
    /// `ova a = 1,` without a pair.
    #[error("Paire name=expr attendue après la virgule")]
    PairAfterComma,
    /// `ova` without `=`.
    #[error("Signe '=' attendu après le nom du champ")]
    EqualsExpected,
    /// A derived table without its alias.
    #[error("Tous les tables dérivé doit avoir leur propre alias")]
    AliasNeeded,
    /// `antso a.b`.
    #[error("un alias ne doit pas contenir un source code '.' ")]
    QualifiedAlias,
    /// `alaivo *` without FROM.
    #[error("Vous ne pouvez pas faire select all si l'origin de la table n'existe pas")]
    SelectAllWithoutFrom,
    /// `manamboara jery v` without `@`.
    #[error("Le caractère '@' est attendu après le nom de la vue")]
    ViewAt,
    /// `manamboara tabilao t` without its column list.
    #[error("Liste de champs attendue après le nom de la table")]
    FieldList,
    /// A column definition missing after a comma.
    #[error("Champ attendu après la virgule")]
    FieldAfterComma,
    /// A column list neither continues nor ends.
    #[error("Virgule ou parenthèse fermante attendue")]
    FieldCommaOrClose,
    /// `manamboara efitra d` without `(`.
    #[error("'(' no hamaritana ny efitra")]
    DomainOpen,
    /// `manamboara efitra d (…` without `)`.
    #[error("')' no hamanarana ny famaritana ny efitra")]
    DomainClose,
    /// A bad bound in `ISA(…)` / `LAHATSORATRA(…)`.
    #[error("impossible de parser en nombre :{0}")]
    Bound(String),
    /// `TANISA` without `(`.
    #[error("Parenthèse ouvrante attendue après TANISA")]
    EnumOpen,
    /// `TANISA(a,`.
    #[error("Valeur attendue après la virgule")]
    EnumValue,
    /// `TANISA(a` without `)`.
    #[error("Parenthèse fermante attendue")]
    EnumClose,
    /// `A:` without a type after it.
    #[error("DomainAtom attendu après ':'")]
    UnionPart,
    /// The first VALUES row does not match the column list.
    #[error("Le nombre de champs ({fields}) ne correspond pas au nombre de valeurs ({values})")]
    ValueCount {
        /// Columns listed.
        fields: usize,
        /// Values in the row.
        values: usize,
    },
    /// A `#fetra` bound beyond what DirkDB accepts.
    #[error("For input string: \"{0}\"")]
    LimitTooLarge(String),
    /// The statement nests deeper than the parser allows.
    #[error(
        "the statement nests more than {0} levels deep (parentheses, operators or subqueries)"
    )]
    TooDeep(usize),
    /// `#vondrona` with `alaivo *`.
    #[error("GROUP BY n'est supporté que pour une liste explicite de champs")]
    GroupNeedsList,
    /// A function other than `count`/`sum`/`avg` under `#vondrona`.
    #[error("Fonction non supportée dans GROUP BY: {0}")]
    GroupFunction(String),
    /// An aggregate with other than one argument.
    #[error("{0} attend exactement 1 argument")]
    GroupArgCount(String),
    /// An aggregate of something else than a column.
    #[error("{0} attend un identifiant de colonne (ex: {0}(a))")]
    GroupArgColumn(String),
    /// A column item not among the `#vondrona` keys (Java's display of the identifier).
    #[error("Champ non agrégé doit être dans #vondrona: {0}")]
    NotGrouped(String),
    /// A `#vondrona` key, item or aggregate argument naming no column (DirkDB wraps the
    /// FieldNotFoundErr, so its Java class shows).
    #[error(
        "sqlTsinjo.query.err.eval.FieldNotFoundErr: Le champ '{0}' n'existe pas dans la relation."
    )]
    GroupFieldNotFound(String),
    /// Same, for a column name found more than once (AmbigousNameErr).
    #[error("sqlTsinjo.query.err.eval.AmbigousNameErr: Le champ '{name}' est ambigu. Il apparaît {count} fois dans la relation.")]
    GroupAmbiguous {
        /// The name as written.
        name: String,
        /// How many columns have it.
        count: usize,
    },
    /// An item that is neither a column nor an aggregate, under `#vondrona`.
    #[error("Expression non supportée avec GROUP BY: {0}")]
    GroupExpression(String),
    /// Set operands with different column counts (RelationDomainSizeErr).
    #[error("{left}({left_count}) AND {right}({right_count})")]
    SetOpColumns {
        /// The left relation's name.
        left: String,
        /// Its column count.
        left_count: usize,
        /// The right relation's name.
        right: String,
        /// Its column count.
        right_count: usize,
    },
    /// No current database.
    #[error("Tsy nisafidy tahiry ianao")]
    NoDatabase,
    /// `ampiasao` / `ravao ny tahiry` of an unknown database.
    #[error("Tsy misy ny tahiry : {0}")]
    DatabaseNotFound(String),
    /// `manamboara tahiry` of an existing database.
    #[error("Ny tahiry ({0}) dia efa misy")]
    DatabaseExists(String),
    /// An existing table.
    #[error("Ny tabilao : {0} dia efa misy")]
    TableExists(String),
    /// An existing domain (DirkDB's own spelling).
    #[error("Ny efitra : {0} dia efa misys")]
    DomainExists(String),
    /// An existing view.
    #[error("Ny jery : {0} dia efa misy")]
    ViewExists(String),
    /// An unknown table or domain (DirkDB uses one text for both).
    #[error("La table {db}.{name} n'as pas été trouvé")]
    NotFound {
        /// Current database.
        db: String,
        /// The missing name.
        name: String,
    },
    /// `ravao ny jery` of an unknown view.
    #[error("Ny jery {db}.{name} dia tsy hita")]
    ViewNotFound {
        /// Current database.
        db: String,
        /// The missing name.
        name: String,
    },
}
